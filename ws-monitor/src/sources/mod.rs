//! Where segments come from: the kernel program's ring buffer on a live host
//! ([`capture`]), or a pcap/pcapng file ([`replay`]). Both produce [`crate::flow::Segment`]s.

pub mod capture;
pub mod replay;
