#!/usr/bin/env python3
"""An independent pump-station controller for interop tests: pymodbus serving
the register map of shared/spec/field-devices.md section 3, written from the
spec (not from mizuban's simulator). Fixed, known values; the Rust test checks
that mizuban decodes exactly these.

usage: pymodbus_controller.py PORT
"""
import asyncio
import sys

from pymodbus.datastore import (ModbusSequentialDataBlock, ModbusServerContext,
                                ModbusSlaveContext)
from pymodbus.server import StartAsyncTcpServer


def u32(v):
    return [(v >> 16) & 0xFFFF, v & 0xFFFF]


def controller():
    # Discrete inputs 0-18 alarm bits, 19-31 reserved (0), 32-37 status bits.
    di = [0] * 40
    di[0] = 1     # HH_LEVEL
    di[1] = 1     # HIGH_LEVEL
    di[32] = 1    # P1 running
    di[34] = 1    # P1 in auto
    di[35] = 1    # P2 in auto
    ir = [0] * 23
    ir[0] = 165                   # level_cm (above the 160 cm transmitter HH rule)
    ir[1] = 64                    # p1_current 6.4 A
    ir[2] = 0xFFFF                # p2_current: not available
    ir[3:5] = u32(184233)         # p1_run_min
    ir[5:7] = u32(181020)         # p2_run_min
    ir[7:9] = u32(61877)          # p1_starts
    ir[9:11] = u32(61105)         # p2_starts
    ir[11] = 150                  # p1_last_run_s
    ir[12] = 140                  # p2_last_run_s
    ir[13] = 3                    # p1_starts_last_h
    ir[14] = 2                    # p2_starts_last_h
    ir[15] = 72                   # inflow_est 7.2 m3/h
    ir[16] = 2015                 # supply 201.5 V
    ir[17] = (-35) & 0xFFFF       # panel_temp -3.5 C (i16)
    alarm = (1 << 0) | (1 << 1)
    ir[18:20] = u32(alarm)
    ir[20] = 0b1101
    ir[21:23] = u32(1735689600)   # controller_utc
    hr = [90, 40, 120, 130, 150, 10, 1, 120, 5]
    # pymodbus 3.8 adds 1 to every protocol address before reading its
    # blocks, so blocks start at 1 for protocol address 0.
    return ModbusSlaveContext(
        di=ModbusSequentialDataBlock(1, di),
        co=ModbusSequentialDataBlock(1, [0] * 4),
        hr=ModbusSequentialDataBlock(1, hr),
        ir=ModbusSequentialDataBlock(1, ir),
    )


async def main(port):
    context = ModbusServerContext(slaves=controller(), single=True)
    await StartAsyncTcpServer(context=context, address=("127.0.0.1", port))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
