//! Sparse network codec (SNC): band and random-grouping codes over GF(2) and GF(2^8).
//!
//! No I/O, no clocks, no threads and no global RNG: every seed is a parameter.
//!
//! Order of calls:
//! 1. Build [`CodeParams`] (server side; shipped to clients) and [`CodeParams::validate`] it into
//!    a [`Layout`]: `K` source symbols, `C` precode checks, `N = K + C` columns grouped into `G`
//!    subgenerations (band windows or random groups).
//! 2. Sender: [`encoder::Encoder::new`] over the borrowed segment bytes; write packets into
//!    caller buffers from per-receiver streams ([`encoder::Stream`]) or explicit plans.
//! 3. Receiver: [`packet::parse`] each payload into a [`packet::PacketView`] and push it into a
//!    decoder; relays push it into a [`recoder::Recoder`] too and send its recoded packets.
//! 4. [`decoder::dense::DenseDecoder`] is the plain Gaussian decoder: the oracle every other
//!    decoder is tested against, and the decoder for [`CodeKind::Random`].
//!
//! Modules: [`params`] (parameters, limits), [`layout`] (derived sizes, grouping, precode graph),
//! [`prng`] (counter-based generator), [`packet`] (payload wire format), [`coeffs`] (a packet's
//! coefficients as a row over the columns), [`field`] (GF kernels).
pub mod coeffs;
pub mod decoder;
pub mod encoder;
pub mod field;
pub mod layout;
pub mod packet;
pub mod params;
pub mod prng;
pub mod recoder;

pub use layout::Layout;
pub use packet::{PacketError, PacketKind, PacketView};
pub use params::{CodeKind, CodeParams, Density, Field, ParamError};
