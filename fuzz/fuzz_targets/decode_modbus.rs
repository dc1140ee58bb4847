//! The Modbus register decoding of the controller profile, on any register
//! and bit values (and any lengths, as a misbehaving gateway may answer):
//! the bytes are cut into the poll's ranges. Never a panic or a hang.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mizuban::config::Config;
use mizuban::device::modbus::{decode_poll, ModbusMap, RangeData};
use std::sync::OnceLock;

fn map() -> &'static ModbusMap {
    static MAP: OnceLock<ModbusMap> = OnceLock::new();
    MAP.get_or_init(|| {
        let cfg = Config::load_embedded().expect("the shipped configuration loads");
        cfg.profiles
            .values()
            .find_map(|p| p.modbus.clone())
            .expect("a shipped profile has a register map")
    })
}

fuzz_target!(|data: &[u8]| {
    let map = map();
    let mut bytes = data.iter().copied();
    let mut ranges = Vec::new();
    for r in map.plan() {
        // One byte says how many values this range answered (a short or long
        // answer is a gateway fault the decoder must survive).
        let Some(n) = bytes.next() else { break };
        let n = (n as usize) % (r.count as usize + 3);
        let d = if r.table.is_bits() {
            RangeData::Bits((0..n).map(|_| bytes.next().unwrap_or(0) & 1 == 1).collect())
        } else {
            RangeData::Words((0..n).map(|_| u16::from_be_bytes([bytes.next().unwrap_or(0), bytes.next().unwrap_or(0)])).collect())
        };
        ranges.push((r, d));
    }
    let _ = decode_poll(map, &ranges);
});
