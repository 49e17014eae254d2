#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| agentmesh_fuzz::core_checks::json_query(data));
