#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ragd_tests::fuzz::load_npy(data));
