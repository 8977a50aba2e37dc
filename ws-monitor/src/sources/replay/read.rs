//! Capture files for replay: format sniffing, streaming pcap/pcapng reading
//! (pcap-parser), record framing and timestamps.

use super::*;

/// One captured frame, as the file stored it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Frame<'a> {
    pub(super) link: Link,
    /// Capture time, nanoseconds since the Unix epoch.
    pub(super) ts_ns: u64,
    pub(super) data: &'a [u8],
}

/// Starting read buffer; enough for any ordinary packet record many times over.
pub(super) const BUFFER_SIZE: usize = 1 << 20;
/// The largest record (pcap record or pcapng block) the reader will grow its buffer for;
/// anything larger is taken as corruption.
pub(super) const MAX_RECORD: usize = 64 << 20;
/// The largest pcap record length accepted regardless of the file's snapshot length
/// (libpcap's and Wireshark's limit).
pub(super) const MAX_SNAPLEN: u32 = 262_144;

/// How many leading bytes are read to recognise the format and to quote in errors.
pub(super) const HEAD_LEN: usize = 16;

/// Reads all frames of the capture at `path`, in file order. Returns whether the file
/// ended in the middle of a record.
pub(super) fn read_capture<F: FnMut(Frame<'_>)>(path: &Path, mut on_frame: F) -> Result<bool> {
    let name = path.display().to_string();
    let (source, head) = Source::open(path, &name)?;
    let read_error = Rc::clone(&source.error);
    match sniff(&head) {
        Sniffed::Pcap => {
            let mut reader =
                LegacyPcapReader::new(BUFFER_SIZE, source).map_err(|e| header_error(&name, "pcap", &e, &read_error))?;
            let mut handler = LegacyHandler::new(name.clone());
            pump(&name, &mut reader, &mut handler, &mut on_frame, &read_error)
        }
        Sniffed::PcapNg => {
            let mut reader =
                PcapNGReader::new(BUFFER_SIZE, source).map_err(|e| header_error(&name, "pcapng", &e, &read_error))?;
            let mut handler = NgHandler::new(name.clone());
            let truncated = pump(&name, &mut reader, &mut handler, &mut on_frame, &read_error)?;
            handler.finish()?;
            Ok(truncated)
        }
        Sniffed::Empty => {
            bail!("{name} is empty, not a pcap or pcapng capture: save captures with tcpdump -w or Wireshark")
        }
        Sniffed::Compressed(kind) => bail!(
            "{name} is {kind}-compressed (starts with {}): decompress it first, then replay the .pcap/.pcapng",
            quote_bytes(&head)
        ),
        Sniffed::Other => bail!(
            "{name} is not a pcap or pcapng capture (starts with {}): save captures with tcpdump -w or Wireshark",
            quote_bytes(&head)
        ),
    }
}

/// What the first bytes of a file say it is.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Sniffed {
    Pcap,
    PcapNg,
    Empty,
    Compressed(&'static str),
    Other,
}

pub(super) fn sniff(head: &[u8]) -> Sniffed {
    match head {
        [] => Sniffed::Empty,
        // Microsecond and nanosecond pcap, both byte orders; "modified" (Kuznetzov) pcap.
        [0xd4, 0xc3, 0xb2, 0xa1, ..]
        | [0xa1, 0xb2, 0xc3, 0xd4, ..]
        | [0x4d, 0x3c, 0xb2, 0xa1, ..]
        | [0xa1, 0xb2, 0x3c, 0x4d, ..]
        | [0x34, 0xcd, 0xb2, 0xa1, ..] => Sniffed::Pcap,
        // The pcapng Section Header Block type is a byte palindrome.
        [0x0a, 0x0d, 0x0d, 0x0a, ..] => Sniffed::PcapNg,
        [0x1f, 0x8b, ..] => Sniffed::Compressed("gzip"),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Sniffed::Compressed("zstd"),
        [0xfd, b'7', b'z', b'X', b'Z', ..] => Sniffed::Compressed("xz"),
        [b'B', b'Z', b'h', ..] => Sniffed::Compressed("bzip2"),
        _ => Sniffed::Other,
    }
}

/// `0a 0d 0d 0a ... "text"`: the first bytes in hex, and as text when they are printable.
pub(super) fn quote_bytes(head: &[u8]) -> String {
    let shown = head.get(..8).unwrap_or(head);
    let mut out = String::new();
    for (i, b) in shown.iter().enumerate() {
        let sep = if i == 0 { "" } else { " " };
        let _ = write!(out, "{sep}{b:02x}");
    }
    if shown.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        let _ = write!(out, " \"{}\"", String::from_utf8_lossy(shown));
    }
    out
}

/// `io::Error`'s text without the trailing " (os error N)".
pub(super) fn io_text(err: &io::Error) -> String {
    let text = err.to_string();
    match text.rsplit_once(" (os error ") {
        Some((msg, _)) => msg.to_string(),
        None => text,
    }
}

/// The file after the bytes already read to recognise its format, so that pipes and
/// process substitutions (`<(zcat x.pcap.gz)`) work as well as regular files. Keeps the last I/O error, which
/// pcap-parser reduces to a bare `ReadError`.
pub(super) struct Source {
    head: [u8; HEAD_LEN],
    head_len: usize,
    head_pos: usize,
    file: File,
    error: Rc<Cell<Option<io::Error>>>,
}

impl Source {
    /// Opens `path` and reads its first bytes (returned as well).
    fn open(path: &Path, name: &str) -> Result<(Source, Vec<u8>)> {
        let cannot_open = |e: &io::Error| anyhow!("cannot open {name}: {}", io_text(e));
        if path.is_dir() {
            bail!("cannot open {name}: Is a directory");
        }
        let mut file = File::open(path).map_err(|e| cannot_open(&e))?;
        let mut head = [0u8; HEAD_LEN];
        let mut head_len = 0;
        while let Some(space) = head.get_mut(head_len..).filter(|s| !s.is_empty()) {
            match file.read(space) {
                Ok(0) => break,
                Ok(n) => head_len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => bail!("cannot read {name}: {}", io_text(&e)),
            }
        }
        let sniffed = head.get(..head_len).unwrap_or_default().to_vec();
        let source = Source { head, head_len, head_pos: 0, file, error: Rc::default() };
        Ok((source, sniffed))
    }
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let pending = self.head.get(self.head_pos..self.head_len).unwrap_or_default();
        let from_head = pending.len().min(buf.len());
        if let (Some(dst), Some(src)) = (buf.get_mut(..from_head), pending.get(..from_head)) {
            dst.copy_from_slice(src);
        }
        self.head_pos += from_head;
        // pcap-parser checks the file header with a single read, and a pipe hands out
        // whatever its writer has written so far: fill the buffer unless the file ends.
        let mut filled = from_head;
        while let Some(rest) = buf.get_mut(filled..).filter(|rest| !rest.is_empty()) {
            match self.file.read(rest) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let kind = e.kind();
                    self.error.set(Some(e));
                    return if filled > 0 { Ok(filled) } else { Err(kind.into()) };
                }
            }
        }
        Ok(filled)
    }
}

pub(super) fn read_failed(name: &str, slot: &Cell<Option<io::Error>>) -> anyhow::Error {
    match slot.take() {
        Some(e) => anyhow!("cannot read {name}: {}", io_text(&e)),
        None => anyhow!("cannot read {name}: read error"),
    }
}

/// The reader could not even get past the file header.
pub(super) fn header_error<I>(
    name: &str,
    format: &str,
    err: &PcapError<I>,
    slot: &Cell<Option<io::Error>>,
) -> anyhow::Error {
    match err {
        PcapError::ReadError => read_failed(name, slot),
        PcapError::Incomplete(_) | PcapError::UnexpectedEof | PcapError::Eof => anyhow!(
            "{name} is cut short inside its {format} file header: the capture is incomplete; copy or record it again"
        ),
        _ => anyhow!(
            "{name} starts like a {format} capture but its file header is corrupt: re-save it with Wireshark or editcap"
        ),
    }
}

pub(super) fn corrupt(name: &str, offset: u64, what: &str) -> anyhow::Error {
    anyhow!("{name} is corrupt at byte {offset} ({what}): repair it (e.g. pcapfix) or re-save it with Wireshark")
}

/// Per-format handling of the records a pcap-parser reader yields.
pub(super) trait Records {
    /// Handles one block; `offset` is its position in the file (for error messages).
    fn block<F: FnMut(Frame<'_>)>(&mut self, block: PcapBlockOwned<'_>, offset: u64, on_frame: &mut F) -> Result<()>;

    /// Looks at the header of the incomplete record at the start of `data`: says what
    /// is wrong if its declared length cannot be right.
    fn implausible(&self, data: &[u8]) -> Option<String>;
}

/// What to do after asking the reader for the next block.
pub(super) enum Step {
    Consume(usize),
    End,
    NeedData,
    CutShort,
    ReadFailed,
    Corrupt(String),
}

/// Drives a pcap-parser streaming reader to the end of the file, refilling its buffer
/// as it drains and growing it (up to [`MAX_RECORD`]) for records larger than it.
/// Returns whether the file ends in the middle of a record.
pub(super) fn pump<R: PcapReaderIterator, H: Records, F: FnMut(Frame<'_>)>(
    name: &str,
    reader: &mut R,
    handler: &mut H,
    on_frame: &mut F,
    read_error: &Cell<Option<io::Error>>,
) -> Result<bool> {
    let mut capacity = BUFFER_SIZE;
    loop {
        let offset = u64::try_from(reader.consumed()).unwrap_or(u64::MAX);
        let step = match reader.next() {
            Ok((len, block)) => {
                handler.block(block, offset, on_frame)?;
                Step::Consume(len)
            }
            Err(PcapError::Eof) => Step::End,
            Err(PcapError::Incomplete(_) | PcapError::BufferTooSmall) => Step::NeedData,
            Err(PcapError::UnexpectedEof) => Step::CutShort,
            Err(PcapError::ReadError) => Step::ReadFailed,
            Err(PcapError::HeaderNotRecognized) => Step::Corrupt("unrecognised block".into()),
            Err(PcapError::NomError(_, kind) | PcapError::OwnedNomError(_, kind)) => {
                Step::Corrupt(format!("malformed block: {}", kind.description()))
            }
        };
        match step {
            Step::Consume(len) => reader.consume(len),
            Step::End => return Ok(false),
            Step::ReadFailed => return Err(read_failed(name, read_error)),
            Step::Corrupt(what) => return Err(corrupt(name, offset, &what)),
            Step::CutShort => {
                if let Some(what) = handler.implausible(reader.data()) {
                    return Err(corrupt(name, offset, &what));
                }
                return Ok(true);
            }
            Step::NeedData => {
                if let Some(what) = handler.implausible(reader.data()) {
                    return Err(corrupt(name, offset, &what));
                }
                let before = reader.data().len();
                if before < capacity {
                    // Reading 0 bytes marks the reader exhausted: the next call then
                    // reports the end of the file, cut short or not.
                    if reader.refill().is_err() {
                        return Err(read_failed(name, read_error));
                    }
                }
                if reader.data().len() == before && !reader.reader_exhausted() {
                    // The buffer is full of one incomplete record.
                    if capacity >= MAX_RECORD {
                        let what = format!("a record larger than {} MiB", MAX_RECORD >> 20);
                        return Err(corrupt(name, offset, &what));
                    }
                    capacity = capacity.saturating_mul(2).min(MAX_RECORD);
                    reader.grow(capacity);
                }
            }
        }
    }
}

pub(super) fn read_u32(data: &[u8], at: usize, big_endian: bool) -> Option<u32> {
    let bytes: [u8; 4] = data.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(if big_endian { u32::from_be_bytes(bytes) } else { u32::from_le_bytes(bytes) })
}

/// Names of common link-layer types ws-monitor cannot decode, for error messages.
pub(super) fn linktype_name(linktype: i32) -> &'static str {
    match linktype {
        6 => "IEEE802_5 token ring",
        9 => "PPP",
        10 => "FDDI",
        50 => "PPP_HDLC",
        104 => "C_HDLC",
        105 => "IEEE802_11 Wi-Fi",
        119 => "PRISM_HEADER Wi-Fi",
        127 => "IEEE802_11_RADIOTAP Wi-Fi",
        147..=162 => "USER",
        189 => "USB_LINUX",
        192 => "PPI",
        195 => "IEEE802_15_4",
        201 => "BLUETOOTH_HCI_H4",
        220 => "USB_LINUX_MMAPPED",
        239 => "NFLOG",
        249 => "USBPCAP",
        252 => "WIRESHARK_UPPER_PDU",
        253 => "NETLINK",
        _ => "unknown",
    }
}

pub(super) fn unsupported_link_error(name: &str, linktype: i32) -> anyhow::Error {
    anyhow!(
        "{name} has link-layer type {linktype} ({}), which ws-monitor cannot decode: capture on an Ethernet, loopback or `any` interface (tcpdump -i any -w FILE)",
        linktype_name(linktype)
    )
}

/// Legacy pcap: one link type for the whole file, set by the file header.
pub(super) struct LegacyHandler {
    name: String,
    link: Link,
    nanosecond: bool,
    big_endian: bool,
    /// Largest plausible captured length: max(snaplen, [`MAX_SNAPLEN`]).
    max_caplen: u32,
}

impl LegacyHandler {
    fn new(name: String) -> Self {
        LegacyHandler { name, link: Link::Ethernet, nanosecond: false, big_endian: false, max_caplen: MAX_SNAPLEN }
    }

    fn check_caplen(&self, caplen: u32) -> Option<String> {
        (caplen > self.max_caplen)
            .then(|| format!("a record of {caplen} captured bytes, more than the {} this file allows", self.max_caplen))
    }
}

impl Records for LegacyHandler {
    fn block<F: FnMut(Frame<'_>)>(&mut self, block: PcapBlockOwned<'_>, offset: u64, on_frame: &mut F) -> Result<()> {
        match block {
            PcapBlockOwned::LegacyHeader(header) => {
                // The upper bits of the field hold FCS information, not the type.
                let linktype = header.network.0 & 0xFFFF;
                self.link = Link::from_linktype(linktype);
                if let Link::Unsupported(linktype) = self.link {
                    return Err(unsupported_link_error(&self.name, linktype));
                }
                self.nanosecond = header.is_nanosecond_precision();
                self.big_endian = header.is_bigendian();
                self.max_caplen = header.snaplen.max(MAX_SNAPLEN);
            }
            PcapBlockOwned::Legacy(record) => {
                if let Some(what) = self.check_caplen(record.caplen) {
                    return Err(corrupt(&self.name, offset, &what));
                }
                let fraction = u64::from(record.ts_usec) * if self.nanosecond { 1 } else { 1_000 };
                let ts_ns = u64::from(record.ts_sec) * 1_000_000_000 + fraction;
                on_frame(Frame { link: self.link, ts_ns, data: record.data });
            }
            PcapBlockOwned::NG(_) => {}
        }
        Ok(())
    }

    fn implausible(&self, data: &[u8]) -> Option<String> {
        // Record header: seconds, fraction, captured length, original length.
        self.check_caplen(read_u32(data, 8, self.big_endian)?)
    }
}

/// One pcapng interface (Interface Description Block).
#[derive(Clone, Copy, Debug)]
pub(super) struct Interface {
    pub(super) link: Link,
    /// Timestamp units per second (`if_tsresol`; microseconds by default).
    pub(super) units_per_sec: u64,
    /// Seconds to add to every timestamp (`if_tsoffset`).
    pub(super) offset_sec: i64,
    /// 0 when unlimited.
    pub(super) snaplen: u32,
}

impl Interface {
    pub(super) fn ts_ns(&self, high: u32, low: u32) -> u64 {
        let ticks = u128::from((u64::from(high) << 32) | u64::from(low));
        let ns = ticks * 1_000_000_000 / u128::from(self.units_per_sec.max(1));
        let ns = i128::try_from(ns).unwrap_or(i128::MAX) + i128::from(self.offset_sec) * 1_000_000_000;
        u64::try_from(ns.max(0)).unwrap_or(u64::MAX)
    }
}

/// `if_tsresol`: a power of ten, or of two when the top bit is set. Invalid values fall
/// back to the default (microseconds).
pub(super) fn ts_units_per_sec(tsresol: u8) -> u64 {
    let exp = u32::from(tsresol & 0x7F);
    let units = if tsresol & 0x80 == 0 { 10u64.checked_pow(exp) } else { 2u64.checked_pow(exp) };
    units.unwrap_or(1_000_000)
}

/// `if_tsoffset` in the section's byte order (pcap-parser's own field assumes
/// little-endian).
pub(super) fn ts_offset(options: &[PcapNGOption<'_>], big_endian: bool) -> i64 {
    options
        .iter()
        .find(|opt| opt.code == OptionCode::IfTsoffset)
        .and_then(|opt| opt.value().first_chunk::<8>())
        .map_or(0, |b| if big_endian { i64::from_be_bytes(*b) } else { i64::from_le_bytes(*b) })
}

/// pcapng: sections, each with its own interfaces (link type, time resolution).
pub(super) struct NgHandler {
    name: String,
    /// Interfaces of the current section, by id.
    interfaces: Vec<Interface>,
    /// Byte order of the current section.
    big_endian: bool,
    /// Simple Packet Blocks carry no time: they get the last one seen.
    last_ts_ns: u64,
    /// Any interface, in any section, that can be decoded.
    any_supported: bool,
    /// The first interface link type that cannot.
    first_unsupported: Option<i32>,
}

impl NgHandler {
    fn new(name: String) -> Self {
        NgHandler {
            name,
            interfaces: Vec::new(),
            big_endian: false,
            last_ts_ns: 0,
            any_supported: false,
            first_unsupported: None,
        }
    }

    fn interface(&self, id: u32, offset: u64) -> Result<&Interface> {
        usize::try_from(id).ok().and_then(|i| self.interfaces.get(i)).ok_or_else(|| {
            let what = format!("a packet on interface {id}, but the section declares {}", self.interfaces.len());
            corrupt(&self.name, offset, &what)
        })
    }

    /// Called at the end of the file.
    fn finish(&self) -> Result<()> {
        match self.first_unsupported {
            Some(linktype) if !self.any_supported => Err(unsupported_link_error(&self.name, linktype)),
            _ => Ok(()),
        }
    }
}

impl Records for NgHandler {
    fn block<F: FnMut(Frame<'_>)>(&mut self, block: PcapBlockOwned<'_>, offset: u64, on_frame: &mut F) -> Result<()> {
        let PcapBlockOwned::NG(block) = block else {
            return Ok(());
        };
        match block {
            Block::SectionHeader(shb) => {
                self.interfaces.clear();
                self.big_endian = shb.big_endian();
            }
            Block::InterfaceDescription(idb) => {
                let link = Link::from_linktype(idb.linktype.0);
                match link {
                    Link::Unsupported(linktype) => {
                        self.first_unsupported.get_or_insert(linktype);
                    }
                    _ => self.any_supported = true,
                }
                self.interfaces.push(Interface {
                    link,
                    units_per_sec: ts_units_per_sec(idb.if_tsresol),
                    offset_sec: ts_offset(&idb.options, self.big_endian),
                    snaplen: idb.snaplen,
                });
            }
            Block::EnhancedPacket(epb) => {
                let iface = self.interface(epb.if_id, offset)?;
                let ts_ns = iface.ts_ns(epb.ts_high, epb.ts_low);
                let link = iface.link;
                self.last_ts_ns = ts_ns;
                on_frame(Frame { link, ts_ns, data: epb.packet_data() });
            }
            Block::SimplePacket(spb) => {
                let iface = self.interface(0, offset)?;
                // Captured length: the original length, cut by the snapshot length; the
                // block data also holds up to 3 bytes of padding.
                let data = spb.packet_data();
                let data = match usize::try_from(iface.snaplen) {
                    Ok(snaplen) if snaplen > 0 => data.get(..snaplen).unwrap_or(data),
                    _ => data,
                };
                on_frame(Frame { link: iface.link, ts_ns: self.last_ts_ns, data });
            }
            _ => {}
        }
        Ok(())
    }

    fn implausible(&self, data: &[u8]) -> Option<String> {
        // Block header: type, total length. A Section Header Block may switch the byte
        // order, given by the magic after the length.
        let big_endian = match data.first_chunk::<4>() {
            Some([0x0a, 0x0d, 0x0d, 0x0a]) => match data.get(8..12)? {
                [0x1a, 0x2b, 0x3c, 0x4d] => true,
                [0x4d, 0x3c, 0x2b, 0x1a] => false,
                _ => return Some("section header with an invalid byte-order magic".into()),
            },
            _ => self.big_endian,
        };
        let len = read_u32(data, 4, big_endian)?;
        let size = usize::try_from(len).unwrap_or(usize::MAX);
        if len < 12 || size > MAX_RECORD {
            return Some(format!("a block declaring {len} bytes"));
        }
        // The whole block is there, yet the parser wants more: its contents (say, a
        // packet length) overrun it. Without this, the reader would keep asking for data.
        (size <= data.len()).then(|| format!("a block of {len} bytes whose contents overrun it"))
    }
}
