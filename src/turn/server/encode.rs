//! Encoding answers to requests (RFC 8489 §6.3 responses, §14.8 ERROR-CODE)
//! into the core's scratch buffer with stun-rs: signed with the client's key
//! (MESSAGE-INTEGRITY or -SHA256, §14.5/§14.6) once it proved it, with
//! FINGERPRINT (§14.7) when the request had one, and SOFTWARE only in
//! success answers.

use stun_rs::attributes::stun::{ErrorCode as ErrorCodeAttr, Software};
use stun_rs::{MessageClass, MessageEncoderBuilder, MessageMethod, StunAttribute, StunMessageBuilder, TransactionId};

use super::auth::{IntegrityKind, MESSAGE_INTEGRITY, MESSAGE_INTEGRITY_SHA256, UserKey};
use super::{Server, fingerprint};
use crate::stun::message::HEADER_LEN;

/// The error codes this server answers with: the one STUN/TURN error-code type
/// (RFC 8489 §14.8, RFC 8656 §18), shared with the client core.
pub use crate::stun::error_code::ErrorCode;

impl Server {
    pub(super) fn success(
        &mut self,
        method: MessageMethod,
        txid: [u8; 12],
        attrs: Vec<StunAttribute>,
        signed: Option<(&UserKey, IntegrityKind)>,
    ) -> Option<usize> {
        let builder = StunMessageBuilder::new(method, MessageClass::SuccessResponse);
        self.encode(builder, txid, attrs, signed, true)
    }

    pub(super) fn error(
        &mut self,
        method: u16,
        txid: [u8; 12],
        code: ErrorCode,
        signed: Option<(&UserKey, IntegrityKind)>,
        attrs: Vec<StunAttribute>,
    ) -> Option<usize> {
        self.error_with_reason(method, txid, code, code.reason(), signed, attrs)
    }

    /// An error answer whose reason phrase says more than the code's name
    /// (RFC 8489 §14.8: the phrase is for a human, so it may say what to change).
    pub(super) fn error_with_reason(
        &mut self,
        method: u16,
        txid: [u8; 12],
        code: ErrorCode,
        reason: &str,
        signed: Option<(&UserKey, IntegrityKind)>,
        mut attrs: Vec<StunAttribute>,
    ) -> Option<usize> {
        // The server sends only codes it knows, each with a counter slot.
        if let Some(sent) = self.stats.errors_sent.get_mut(code.index()) {
            *sent += 1;
        }
        let e = stun_rs::ErrorCode::new(code.code(), reason).ok()?;
        attrs.insert(0, ErrorCodeAttr::from(e).into());
        let method = MessageMethod::try_from(method).ok()?;
        let builder = StunMessageBuilder::new(method, MessageClass::ErrorResponse);
        // No SOFTWARE in errors: a 401 challenge is what an amplification attack
        // gets back, so it carries only what the client needs (RFC 8489 §14.14: MAY).
        self.encode(builder, txid, attrs, signed, false)
    }

    pub(super) fn encode(
        &mut self,
        mut b: StunMessageBuilder,
        txid: [u8; 12],
        attrs: Vec<StunAttribute>,
        signed: Option<(&UserKey, IntegrityKind)>,
        software: bool,
    ) -> Option<usize> {
        b = b.with_transaction_id(TransactionId::from(txid));
        for a in attrs {
            b = b.with_attribute(a);
        }
        if software && let Ok(s) = Software::new(&self.cfg.software) {
            b = b.with_attribute(s);
        }
        self.reply_signed = signed.is_some();
        let fingerprint = std::mem::take(&mut self.reply_fingerprint);
        let encoder = MessageEncoderBuilder::default().build();
        let n = match encoder.encode(&mut self.scratch, &b.build()) {
            Ok(n) if n >= HEADER_LEN => n,
            Ok(_) => return None,
            Err(e) => {
                tracing::warn!("encoding an answer failed: {e:?}");
                return None;
            }
        };
        // Integrity and FINGERPRINT by hand, with the key itself: a user from
        // the user database is known only by its key (MD5(user:realm:pass)),
        // which stun-rs cannot take.
        let n = match signed {
            Some((user, kind)) => append_integrity(&mut self.scratch, n, &user.key, kind)?,
            None => n,
        };
        if fingerprint { append_fingerprint(&mut self.scratch, n) } else { Some(n) }
    }
}

/// Appends MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.5,
/// §14.6) to the message in `buf[..n]`: the HMAC covers the message with its
/// header length already counting the attribute.
fn append_integrity(buf: &mut [u8], n: usize, key: &[u8], kind: IntegrityKind) -> Option<usize> {
    use hmac::{Hmac, Mac};
    let (attr, len) = match kind {
        IntegrityKind::Sha1 => (MESSAGE_INTEGRITY, 20),
        IntegrityKind::Sha256 => (MESSAGE_INTEGRITY_SHA256, 32),
    };
    let end = n + 4 + len;
    if end > buf.len() {
        return None;
    }
    let body = (end - HEADER_LEN) as u16;
    buf[2..4].copy_from_slice(&body.to_be_bytes());
    let mac: Vec<u8> = match kind {
        IntegrityKind::Sha1 => {
            let mut m = <Hmac<sha1::Sha1> as Mac>::new_from_slice(key).ok()?;
            m.update(&buf[..n]);
            m.finalize().into_bytes().to_vec()
        }
        IntegrityKind::Sha256 => {
            let mut m = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).ok()?;
            m.update(&buf[..n]);
            m.finalize().into_bytes().to_vec()
        }
    };
    buf[n..n + 2].copy_from_slice(&attr.to_be_bytes());
    buf[n + 2..n + 4].copy_from_slice(&(len as u16).to_be_bytes());
    buf[n + 4..end].copy_from_slice(&mac);
    Some(end)
}

/// Appends FINGERPRINT (RFC 8489 §14.7) to the message in `buf[..n]`.
fn append_fingerprint(buf: &mut [u8], n: usize) -> Option<usize> {
    let end = n + 8;
    if end > buf.len() {
        return None;
    }
    buf[2..4].copy_from_slice(&((end - HEADER_LEN) as u16).to_be_bytes());
    let crc = fingerprint::crc32(&buf[..n]) ^ fingerprint::XOR;
    buf[n..n + 2].copy_from_slice(&fingerprint::FINGERPRINT.to_be_bytes());
    buf[n + 2..n + 4].copy_from_slice(&4u16.to_be_bytes());
    buf[n + 4..end].copy_from_slice(&crc.to_be_bytes());
    Some(end)
}
