"""The machine just before a cell, as a result records it (measured by bench.observe.machine)."""

from __future__ import annotations

from pydantic import BaseModel, Field

# Other processes named in a window's record: enough to name the hog without a process list.
TOP_PROCESSES = 3


class OtherProcess(BaseModel):
    """A process that is not ours, and the cores it used over a window."""

    pid: int
    name: str = Field(description="the kernel's name for it (comm, at most 15 characters)")
    cores: float = Field(description="its CPU-seconds over the window / the window's seconds")


class OtherUsage(BaseModel):
    """The CPU used over a window by processes that are not ours, and by the hypervisor."""

    wall_s: float = 0.0
    cores: float = Field(default=0.0, description="CPU-seconds of others / wall seconds")
    ours_cores: float = Field(default=0.0, description="CPU-seconds of ours / wall seconds")
    steal_share: float = Field(
        default=0.0, description="share of the online CPUs' time the hypervisor took (VMs)"
    )
    by_process: list[OtherProcess] = Field(
        default_factory=list, description=f"the {TOP_PROCESSES} busiest other processes"
    )


class MachineState(BaseModel):
    """What could make numbers untrustworthy, measured just before a cell."""

    online_cpus: int
    usable_cpus: list[int] = Field(description="the CPUs this process may run on")
    load_avg: tuple[float, float, float] = Field(description="1, 5 and 15 minutes")
    others: OtherUsage = Field(description="other processes' CPU just before the cell")
    governors: dict[int, str] | None = Field(
        default=None, description="cpufreq governor per usable CPU; None: not readable"
    )
    boost: bool | None = Field(default=None, description="turbo/boost on; None: not readable")
    smt_active: bool | None = Field(default=None, description="None: not readable")
    smt_siblings: list[list[int]] | None = Field(
        default=None, description="groups of usable CPUs that are threads of one core"
    )
    memory_available_share: float
    swap_used_mb: float
    memory_pressure_pct: float | None = Field(
        default=None, description="PSI memory `some avg10`: % of 10 s some task waited"
    )
