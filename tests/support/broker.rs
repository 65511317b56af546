//! A real nisshi broker process for tests, shared by the whole test binary.
