"""Did it change? Figures read from results and the gate over repeated runs (`gate`), the
statistics scipy does not give (`stats`), and a capacity sweep's knee (`capacity`)."""
