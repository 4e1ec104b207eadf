//! `CCFD_RING_BACKEND` picks the backend of an `Auto` ring. A test binary of its own (one test)
//! because it changes the process environment.

use ccfd_ring::{BackendChoice, BackendKind, Ring, RingConfig, RingError, BACKEND_ENV};

#[test]
fn env_var_forces_the_backend() {
    let auto = RingConfig::default().backend(BackendChoice::Auto);
    std::env::set_var(BACKEND_ENV, "syscall");
    assert_eq!(Ring::new(&auto).unwrap().backend(), BackendKind::Syscall);
    std::env::set_var(BACKEND_ENV, "uring");
    match Ring::new(&auto) {
        Ok(r) => assert_eq!(r.backend(), BackendKind::Uring),
        Err(RingError::UringUnavailable { reason }) => eprintln!("io_uring unavailable: {reason}"),
        Err(e) => panic!("{e}"),
    }
    std::env::set_var(BACKEND_ENV, "bogus");
    assert!(matches!(
        Ring::new(&auto),
        Err(RingError::BadBackendEnv { .. })
    ));
    // An explicit choice wins over the environment.
    std::env::set_var(BACKEND_ENV, "uring");
    let explicit = RingConfig::default().backend(BackendChoice::Syscall);
    assert_eq!(
        Ring::new(&explicit).unwrap().backend(),
        BackendKind::Syscall
    );
    std::env::remove_var(BACKEND_ENV);
}
