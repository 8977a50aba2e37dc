//! A frame once its header is read: the checks on the header against the direction's
//! state, the payload (unmasked, UTF-8, inflated where negotiated), messages, and close
//! frames.

use super::*;

impl DirState {
    /// Checks and accounts a header. Returns `true` when its length cannot be used
    /// (MSB set) and sync must be given up.
    /// `after`: the payload bytes that follow the header in this delivery (maybe fewer).
    pub(super) fn begin_frame(
        &mut self,
        h: &FrameHeader,
        hdr: FrameHeaderBytes,
        offset: u64,
        after: &[u8],
        cx: &mut Cx<'_>,
    ) -> bool {
        let class = h.class();
        let kinds = check_header(h, &self.rules, self.frag, self.closed);
        if !kinds.is_empty() && self.probation.is_none() {
            if let Some(&b0) = hdr.as_slice().first() {
                self.known.learn(b0, h.mask.is_some(), kinds);
            }
        }
        if !kinds.is_empty() {
            // The start of the payload, unmasked, for --log-payload.
            let mut excerpt = [0u8; crate::engine::Excerpt::CAP];
            let n = after.len().min(excerpt.len()).min(usize::try_from(h.len).unwrap_or(usize::MAX));
            let (dst, src) = (excerpt.get_mut(..n).unwrap_or(&mut []), after.get(..n).unwrap_or(&[]));
            match h.mask {
                Some(key) => unmask_into(dst, src, key, 0),
                None => dst.copy_from_slice(src),
            }
            for k in kinds.iter() {
                self.report_with(cx, k, offset, hdr, excerpt.get(..n).unwrap_or(&[]));
            }
        }
        if self.abort {
            return false;
        }
        self.count(h, cx);
        self.cur = Cur {
            hdr,
            offset,
            class,
            fin: h.fin,
            mask: h.mask,
            len: h.len,
            seen: 0,
            left: h.len,
            gap: false,
            skippable: false,
        };
        match class {
            OpClass::Text | OpClass::Binary => self.start_msg(class == OpClass::Text, h.rsv1(), offset, hdr),
            OpClass::Continuation if self.frag != Frag::Open => self.msg = Msg::default(),
            OpClass::Close => {
                self.close_body.clear();
                self.closed = true;
            }
            _ => {}
        }
        if class.is_data() {
            self.msg.size = self.msg.size.saturating_add(h.len);
            if let Some(last) = cx.view.last_message.get_mut(self.dir.index()) {
                *last = Some((self.msg.text, self.msg.size));
            }
            if kinds.contains(Kind::OversizedFrame) || kinds.contains(Kind::LengthMsbSet) {
                self.msg.oversized = true;
            } else if self.msg.size > self.rules.max_message_size && !self.msg.oversized {
                self.msg.oversized = true;
                self.report(cx, Kind::OversizedMessage, offset, hdr);
            }
        }
        self.frag = self.frag.after(class, h.fin);
        if class.is_data() && h.fin && self.probation.is_none() {
            if let Some(m) = cx.view.messages.get_mut(self.dir.index()) {
                *m += 1;
            }
        }
        // As the capture decides (ws-monitor-ebpf): binary without RSV1, and its continuations.
        self.cur.skippable = !h.rsv1()
            && match class {
                OpClass::Binary => true,
                OpClass::Continuation => self.msg.active && self.msg.skippable,
                _ => false,
            };
        kinds.contains(Kind::LengthMsbSet)
    }

    pub(super) fn start_msg(&mut self, text: bool, rsv1: bool, offset: u64, hdr: FrameHeaderBytes) {
        let mut m = Msg { active: true, offset, hdr, skippable: !text && !rsv1, text, ..Msg::default() };
        if !rsv1 {
            m.validate = text;
        } else if let (Some(reset), RsvPolicy::Deflate) = (self.deflate, self.rules.rsv) {
            m.compressed = true;
            if reset {
                self.ctx_lost = false;
                if let Some(inf) = &mut self.inflater {
                    inf.reset();
                }
            }
            let ended = self.inflater.as_ref().is_some_and(|i| i.ended());
            let usable = !self.ctx_lost && !ended;
            // Every compressed message is inflated (binary too): corrupt data and a
            // window misused after no_context_takeover only show that way.
            m.inflate = usable;
            m.validate = usable && text;
            if m.inflate && self.inflater.is_none() {
                self.inflater = Some(Box::new(Inflater::new()));
            }
        }
        // RSV1 without (known) permessage-deflate: the payload is not readable.
        self.utf8.reset();
        self.msg = m;
    }

    pub(super) fn payload(&mut self, chunk: &[u8], cx: &mut Cx<'_>) {
        let phase = (self.cur.seen & 3) as usize;
        self.cur.seen += chunk.len() as u64;
        if self.cur.skippable
            && self.cur.seen > EXCERPT
            && self.cur.left > chunk.len() as u64
            && self.probation.is_none()
        {
            self.anchor_capture(cx);
        }
        match self.cur.class {
            OpClass::Close => {
                let start = self.close_body.len();
                let n = (MAX_CONTROL_PAYLOAD as usize).saturating_sub(start).min(chunk.len());
                self.close_body.resize(start + n, 0);
                if let (Some(dst), Some(src)) = (self.close_body.get_mut(start..), chunk.get(..n)) {
                    match self.cur.mask {
                        Some(k) => unmask_into(dst, src, k, phase),
                        None => dst.copy_from_slice(src),
                    }
                }
            }
            c if c.is_data() && self.msg.active && (self.msg.validate || self.msg.inflate) => {
                self.message_bytes(chunk, phase, cx)
            }
            _ => {}
        }
    }

    pub(super) fn message_bytes(&mut self, chunk: &[u8], phase: usize, cx: &mut Cx<'_>) {
        let Some(key) = self.cur.mask else {
            return self.message_piece(chunk, cx);
        };
        let mut buf = [0u8; UNMASK_CHUNK];
        let mut phase = phase;
        for piece in chunk.chunks(UNMASK_CHUNK) {
            if !(self.msg.validate || self.msg.inflate) {
                return;
            }
            if let Some(dst) = buf.get_mut(..piece.len()) {
                unmask_into(dst, piece, key, phase);
                self.message_piece(dst, cx);
            }
            phase = (phase + piece.len()) & 3;
        }
    }

    /// Unmasked message bytes: inflate and/or validate.
    pub(super) fn message_piece(&mut self, data: &[u8], cx: &mut Cx<'_>) {
        if self.msg.compressed {
            if self.inflate(data, false, cx) {
                self.msg.bad = true;
            }
        } else if self.msg.validate && !self.utf8.feed(data) {
            self.msg.validate = false;
            let (offset, hdr) = (self.msg.offset, self.msg.hdr);
            self.report_with(cx, Kind::InvalidUtf8Text, offset, hdr, data);
        }
    }

    /// Inflates message bytes within the budgets (`max_message_size` for this message,
    /// `max_inflate_rate` for the engine), validating the output when checking text.
    /// Returns `true` when the text turned out invalid.
    pub(super) fn inflate(&mut self, data: &[u8], tail: bool, cx: &mut Cx<'_>) -> bool {
        let DirState { inflater, utf8, msg, .. } = self;
        let Some(inf) = inflater.as_mut() else {
            msg.inflate = false;
            msg.validate = false;
            return false;
        };
        if !msg.inflate {
            return false;
        }
        let msg_left = cx.cfg.max_message_size.saturating_sub(msg.inflated);
        let rate_left = cx.budget.left(cx.ts_ns, cx.cfg.max_inflate_rate);
        let mut budget = msg_left.min(rate_left);
        let before = budget;
        let mut scratch = [0u8; SCRATCH];
        let check = msg.validate;
        let mut bad = false;
        let r = inf.push(data, tail, &mut scratch, &mut budget, |out| {
            if check && !bad && !utf8.feed(out) {
                bad = true;
            }
        });
        let made = before.saturating_sub(budget);
        msg.inflated = msg.inflated.saturating_add(made);
        cx.budget.spend(made);
        if let Err(stop) = r {
            msg.inflate = false;
            msg.validate = false;
            if self.deflate == Some(false) {
                self.ctx_lost = true;
            }
            let (offset, hdr) = (self.msg.offset, self.msg.hdr);
            match stop {
                Stop::Corrupt => self.report(cx, Kind::InvalidCompressedData, offset, hdr),
                Stop::Budget => {
                    cx.stats.inflate_skipped += 1;
                    if msg_left <= rate_left && !self.msg.oversized {
                        self.msg.oversized = true;
                        self.report(cx, Kind::OversizedMessage, offset, hdr);
                    }
                }
            }
            return false;
        }
        if bad {
            self.msg.validate = false;
        }
        bad
    }

    /// Payload bytes of the current frame were lost.
    pub(super) fn payload_gap(&mut self) {
        self.cur.gap = true;
        self.msg.validate = false;
        if self.msg.compressed && self.msg.inflate {
            self.msg.inflate = false;
            if self.deflate == Some(false) {
                self.ctx_lost = true;
            }
        }
    }

    pub(super) fn end_frame(&mut self, cx: &mut Cx<'_>) {
        let (offset, hdr) = (self.msg.offset, self.msg.hdr);
        match self.cur.class {
            OpClass::Close => self.finish_close(cx),
            c if c.is_data() && self.cur.fin && self.msg.active => {
                let mut bad = false;
                if self.msg.compressed && self.msg.inflate {
                    let tail_bad = self.inflate(&TAIL, true, cx);
                    // Only a message that inflated completely is judged.
                    bad = self.msg.inflate && (self.msg.bad || tail_bad);
                }
                if !bad && self.msg.validate && !self.utf8.finish() {
                    bad = true;
                }
                if bad {
                    self.report(cx, Kind::InvalidUtf8Text, offset, hdr);
                }
                self.msg = Msg::default();
            }
            _ => {}
        }
        if let Some(p) = &mut self.probation {
            p.left = p.left.saturating_sub(1);
            if p.left == 0 && !self.abort {
                self.commit(cx);
            }
        }
    }

    pub(super) fn finish_close(&mut self, cx: &mut Cx<'_>) {
        let readable = !self.cur.gap && self.cur.len <= MAX_CONTROL_PAYLOAD;
        let close_body = std::mem::take(&mut self.close_body);
        let body = Some(close_body.as_slice()).filter(|_| readable).unwrap_or(&[]);
        let (code, bad_len, bad_reason) = match body {
            [] => (None, false, false),
            [_] => (None, true, false),
            [a, b, reason @ ..] => (Some(u16::from_be_bytes([*a, *b])), false, std::str::from_utf8(reason).is_err()),
        };
        // An endpoint that answers the other's close echoes its code: only the first
        // close says what its sender refuses.
        let first = cx.view.first_close.is_none_or(|d| d == self.dir);
        if self.probation.is_none() {
            let reason = String::from_utf8_lossy(body.get(2..).unwrap_or(&[])).into_owned();
            if let Some(slot) = cx.view.closes.get_mut(self.dir.index()) {
                *slot = Some(CloseSeen { code, reason, ts_ns: cx.ts_ns });
            }
            cx.view.first_close.get_or_insert(self.dir);
        }
        if !readable {
            return;
        }
        let (offset, hdr) = (self.cur.offset, self.cur.hdr);
        if let Some(code @ (1002 | 1003 | 1007 | 1008 | 1009)) = code.filter(|_| first && self.probation.is_none()) {
            let other = self.dir.reverse().index();
            let before = match (
                cx.view.last_violation.get(other).copied().flatten(),
                cx.view.last_message.get(other).copied().flatten(),
            ) {
                (Some(kind), _) => Before::Violation(kind),
                (None, Some((text, size))) => Before::Message { text, size },
                (None, None) => Before::Nothing,
            };
            cx.emit_detail(self.dir, Kind::PeerProtocolError, offset, hdr, body, Detail::Close { code, before });
        }
        if bad_len {
            self.report_with(cx, Kind::InvalidClosePayload, offset, hdr, body);
        }
        if let Some(code) = code {
            if !close_code_valid(code) {
                self.report_with(cx, Kind::InvalidCloseCode, offset, hdr, body);
            }
            if bad_reason {
                self.report_with(cx, Kind::InvalidCloseReason, offset, hdr, body);
            }
            match &mut self.probation {
                Some(p) => {
                    if let Some(slot) = p.codes.get_mut(p.ncodes) {
                        *slot = code;
                        p.ncodes += 1;
                    }
                }
                None => {
                    *cx.stats.close_codes.entry(code).or_insert(0) += 1;
                    cx.view.last_close_code = Some(code);
                }
            }
        }
    }
}
