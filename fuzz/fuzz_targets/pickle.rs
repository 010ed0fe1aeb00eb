//! The pickle machine alone: any byte string, default limits. Must never panic, hang or blow up.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ptfile::pickle::parse(data, &ptfile::pickle::Limits::default());
});
