//! A real fakesnow emulator process for tests, shared by the whole test binary.
