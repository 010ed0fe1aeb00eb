//! The pickle machine alone: any byte string, default limits. Must never panic, hang or blow up.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ptfile::format::pickle::parse(data, &ptfile::format::pickle::Limits::default());
});
