"""PLCs over Modbus: the `modbus` driver and the `modbus-plc` simulator."""
