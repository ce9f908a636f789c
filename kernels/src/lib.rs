//! Bit packing and packed low-bit kernels.
