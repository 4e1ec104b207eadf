//! ccfd wire protocol and sans-IO state machines. (Work in progress: see issue 4.)
#![forbid(unsafe_code)]
