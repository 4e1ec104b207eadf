//! io_uring UDP data plane with a syscall fallback. (Work in progress: see issue 3.)
