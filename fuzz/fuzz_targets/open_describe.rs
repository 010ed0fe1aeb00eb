//! Whole open path: container, pickle, torch data model, then the description `inspect` prints.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = ptfile::Checkpoint::from_bytes(data.to_vec()) {
        let _ = ptfile::describe::describe(&c);
    }
});
