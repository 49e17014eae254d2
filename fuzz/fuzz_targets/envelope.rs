#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| agentmesh_fuzz::envelope_checks::envelope(data));
