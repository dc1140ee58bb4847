//! See `mizuban::fuzzing::decode_modbus`: the target's body lives in the library so
//! the committed corpus replays through it in the ordinary test suite too.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mizuban::fuzzing::decode_modbus(data));
