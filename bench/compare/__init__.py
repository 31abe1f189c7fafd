"""Did it change? The gated figures, one row each (`metrics`), the one test of a change that
`compare` and the report's baseline share (`change`), `compare`'s pairing, gate and A/A
calibration (`gate`), the limits scipy does not compute (`stats`), and a capacity sweep's knee
(`capacity`)."""
