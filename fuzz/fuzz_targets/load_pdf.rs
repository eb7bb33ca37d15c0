#![no_main]
// pdf-extract panics on some malformed files and ragd-loaders catches it; libFuzzer's panic hook
// would abort first, so the default hook comes back (an uncaught panic still aborts: libfuzzer-sys
// turns a panic that leaves the target into an abort).
static DEFAULT_HOOK: std::sync::Once = std::sync::Once::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    DEFAULT_HOOK.call_once(|| drop(std::panic::take_hook()));
    ragd_tests::fuzz::load_pdf(data)
});
