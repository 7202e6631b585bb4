"""Hardware access: the I2C bus, one module per sensor chip, and the simulated world."""
