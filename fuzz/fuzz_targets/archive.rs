//! The container layer alone: zip / legacy / TorchScript detection and record table.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ptfile::format::zip::Archive::from_bytes(data.to_vec());
});
