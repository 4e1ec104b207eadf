//! Strict little-endian primitives shared by the control-frame codec.
//!
//! `Writer` appends fields to a `Vec<u8>`; `Reader` consumes a borrowed body and fails with a
//! [`WireError`] on short input, over-long strings or lists, invalid UTF-8 and unknown tags. Nothing here
//! panics on any input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use thiserror::Error;

/// Why a control frame could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    /// The frame's length prefix (or an encoded frame) exceeds [`crate::MAX_FRAME_LEN`].
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge {
        /// Announced or encoded body length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The body ended before the field being read.
    #[error("frame truncated while reading {field}")]
    Truncated {
        /// Name of the field being read.
        field: &'static str,
    },
    /// Bytes left over after the last field of the message.
    #[error("{count} trailing bytes after the message")]
    TrailingBytes {
        /// How many bytes were left.
        count: usize,
    },
    /// The frame's protocol version is not [`crate::PROTOCOL_VERSION`].
    #[error("unsupported protocol version {got} (expected {expected})")]
    WrongVersion {
        /// Version found in the frame.
        got: u8,
        /// Version this crate speaks.
        expected: u8,
    },
    /// A message tag or enum discriminant that this version does not define.
    #[error("unknown {what} tag {tag}")]
    UnknownTag {
        /// What kind of tag (message, error code, role, ...).
        what: &'static str,
        /// The tag value.
        tag: u8,
    },
    /// A string longer than its limit.
    #[error("{field} is {len} bytes long, limit {max}")]
    StringTooLong {
        /// Name of the field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A list with more entries than its limit.
    #[error("{field} has {len} entries, limit {max}")]
    ListTooLong {
        /// Name of the field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A string field that is not valid UTF-8.
    #[error("{field} is not valid UTF-8")]
    InvalidUtf8 {
        /// Name of the field.
        field: &'static str,
    },
    /// A field whose value is outside its allowed range (e.g. a bool that is not 0 or 1).
    #[error("invalid value for {field}")]
    InvalidValue {
        /// Name of the field.
        field: &'static str,
    },
}

/// Appends little-endian fields to a buffer.
pub(crate) struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(out: &'a mut Vec<u8>) -> Self {
        Self { out }
    }

    pub(crate) fn u8(&mut self, v: u8) {
        self.out.push(v);
    }

    pub(crate) fn u16(&mut self, v: u16) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }

    pub(crate) fn bytes(&mut self, v: &[u8]) {
        self.out.extend_from_slice(v);
    }

    /// A string as a u16 length and UTF-8 bytes; the caller has checked the limit.
    pub(crate) fn str(
        &mut self,
        field: &'static str,
        v: &str,
        max: usize,
    ) -> Result<(), WireError> {
        if v.len() > max {
            return Err(WireError::StringTooLong {
                field,
                len: v.len(),
                max,
            });
        }
        // `max` never exceeds u16::MAX (checked by the constants' tests), so this cannot truncate.
        self.u16(
            u16::try_from(v.len()).map_err(|_| WireError::StringTooLong {
                field,
                len: v.len(),
                max,
            })?,
        );
        self.bytes(v.as_bytes());
        Ok(())
    }

    /// A list count as u32, checked against its limit.
    pub(crate) fn count(
        &mut self,
        field: &'static str,
        len: usize,
        max: usize,
    ) -> Result<(), WireError> {
        if len > max {
            return Err(WireError::ListTooLong { field, len, max });
        }
        self.u32(u32::try_from(len).map_err(|_| WireError::ListTooLong { field, len, max })?);
        Ok(())
    }

    /// A socket address: family byte (4 or 6), the address bytes, the port.
    pub(crate) fn addr(&mut self, a: &SocketAddr) {
        match a.ip() {
            IpAddr::V4(ip) => {
                self.u8(4);
                self.bytes(&ip.octets());
            }
            IpAddr::V6(ip) => {
                self.u8(6);
                self.bytes(&ip.octets());
            }
        }
        self.u16(a.port());
    }

    pub(crate) fn opt_addr(&mut self, a: &Option<SocketAddr>) {
        match a {
            None => self.u8(0),
            Some(a) => self.addr(a),
        }
    }
}

/// Consumes little-endian fields from a borrowed body.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated { field });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], WireError> {
        let s = self.take(N, field)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn bool(&mut self, field: &'static str) -> Result<bool, WireError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError::InvalidValue { field }),
        }
    }

    pub(crate) fn bytes32(&mut self, field: &'static str) -> Result<[u8; 32], WireError> {
        self.array(field)
    }

    pub(crate) fn str(&mut self, field: &'static str, max: usize) -> Result<String, WireError> {
        let len = usize::from(self.u16(field)?);
        if len > max {
            return Err(WireError::StringTooLong { field, len, max });
        }
        let raw = self.take(len, field)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| WireError::InvalidUtf8 { field })
    }

    /// A list count, checked against its limit and against the bytes left (each entry needs at
    /// least `min_entry_len` bytes), so a hostile count cannot make us allocate.
    pub(crate) fn count(
        &mut self,
        field: &'static str,
        max: usize,
        min_entry_len: usize,
    ) -> Result<usize, WireError> {
        let len = usize::try_from(self.u32(field)?).unwrap_or(usize::MAX);
        if len > max {
            return Err(WireError::ListTooLong { field, len, max });
        }
        if len.saturating_mul(min_entry_len) > self.remaining() {
            return Err(WireError::Truncated { field });
        }
        Ok(len)
    }

    pub(crate) fn addr(&mut self, field: &'static str) -> Result<SocketAddr, WireError> {
        let family = self.u8(field)?;
        self.addr_of_family(family, field)
    }

    fn addr_of_family(&mut self, family: u8, field: &'static str) -> Result<SocketAddr, WireError> {
        let ip = match family {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>(field)?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>(field)?)),
            tag => {
                return Err(WireError::UnknownTag {
                    what: "address family",
                    tag,
                })
            }
        };
        Ok(SocketAddr::new(ip, self.u16(field)?))
    }

    pub(crate) fn opt_addr(
        &mut self,
        field: &'static str,
    ) -> Result<Option<SocketAddr>, WireError> {
        match self.u8(field)? {
            0 => Ok(None),
            family => self.addr_of_family(family, field).map(Some),
        }
    }

    pub(crate) fn finish(self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::TrailingBytes {
                count: self.buf.len(),
            })
        }
    }
}
