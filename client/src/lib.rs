//! ccfd-client library part. (Work in progress: see issue 4.)
