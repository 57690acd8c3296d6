//! The `/ws` signaling protocol: one JSON object per WebSocket text frame,
//! tagged by its `"type"` field. This is natkit's public contract (README,
//! "natkit signal"); `punch`, `call` and the browser page all speak it.
//!
//! Client → server: `join`, `offer`, `answer`, `candidate`, `leave`.
//! Server → client: `created`, `joined`, the relayed `offer`/`answer`/
//! `candidate` (with `from` and `room` added), `exit`, `error`.
//!
//! Relayed messages keep every field the sender put in them: fields this
//! module does not name are carried in `extra` and written back unchanged,
//! so a client may attach its own data (e.g. `punch`'s candidate lists).
//! The fields the server writes ([`SERVER_KEYS`]: `type`, `from`, `to`,
//! `room`, ...) are the server's alone: a client's copy is dropped before
//! relaying, so the addressee sees each of them once, with the server's value
//! (a second `"from"` after the server's would win in `JSON.parse`).
//! The `ice_servers` entries are WebRTC `RTCIceServer` dictionaries
//! (W3C webrtc-pc §4.2.2), ready to hand to `RTCPeerConnection`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// Fields of a relayed message that the protocol does not name; relayed as-is.
pub type Extra = Map<String, Value>;

/// Every key a relayed message names (the server sets or checks them); a
/// client's copy of one of these in [`Extra`] is dropped, never relayed.
pub const SERVER_KEYS: [&str; 6] = ["type", "from", "to", "room", "sdp", "candidate"];

/// Drops the keys the server owns from a client's extra fields.
pub fn drop_server_keys(extra: &mut Extra) {
    for k in SERVER_KEYS {
        extra.remove(k);
    }
}

/// A member's id: random, unguessable, assigned by the server on `join`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PeerId(pub String);

impl PeerId {
    /// 128 random bits, base64url without padding (22 characters).
    pub fn random() -> Self {
        use base64::Engine;
        let bytes: [u8; 16] = rand::random();
        PeerId(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Lets a map keyed by `PeerId` be searched with the `&str` of an id read from elsewhere (Redis).
impl std::borrow::Borrow<str> for PeerId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for PeerId {
    fn from(s: &str) -> Self {
        PeerId(s.to_string())
    }
}

/// A room name. Tutorials type a room *number* into the page, so a JSON
/// number is accepted too and becomes its decimal string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RoomId(pub String);

impl RoomId {
    /// Longest room name accepted, in bytes.
    pub const MAX_LEN: usize = 128;

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Why this name is refused, if it is: empty, too long, or with control characters.
    pub fn problem(&self) -> Option<String> {
        if self.0.is_empty() {
            Some("room name is empty".into())
        } else if self.0.len() > Self::MAX_LEN {
            Some(format!("room name is {} bytes long; the limit is {}", self.0.len(), Self::MAX_LEN))
        } else if self.0.chars().any(char::is_control) {
            Some("room name contains control characters".into())
        } else {
            None
        }
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for RoomId {
    fn from(s: &str) -> Self {
        RoomId(s.to_string())
    }
}

impl<'de> Deserialize<'de> for RoomId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Int(i64),
            Uint(u64),
        }
        Ok(RoomId(
            match Raw::deserialize(d).map_err(|_| serde::de::Error::custom("room must be a string or an integer"))? {
                Raw::Text(s) => s,
                Raw::Int(i) => i.to_string(),
                Raw::Uint(u) => u.to_string(),
            },
        ))
    }
}

/// An ICE candidate as `RTCIceCandidate.toJSON()` gives it. An empty
/// `candidate` is the end-of-candidates marker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IceCandidate {
    pub candidate: String,
    #[serde(rename = "sdpMid", default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(rename = "sdpMLineIndex", default, skip_serializing_if = "Option::is_none")]
    pub sdp_m_line_index: Option<u16>,
    /// e.g. `usernameFragment`; kept unchanged.
    #[serde(flatten)]
    pub extra: Extra,
}

impl IceCandidate {
    pub fn new(candidate: impl Into<String>, sdp_mid: Option<String>, sdp_m_line_index: Option<u16>) -> Self {
        IceCandidate { candidate: candidate.into(), sdp_mid, sdp_m_line_index, extra: Extra::new() }
    }
}

/// One `RTCIceServer` entry for `RTCPeerConnection({iceServers})`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    #[serde(deserialize_with = "one_or_many")]
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// `urls` may be one string or a list of strings (webrtc-pc §4.2.2).
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Urls {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Urls::deserialize(d)? {
        Urls::One(u) => vec![u],
        Urls::Many(v) => v,
    })
}

/// What a client sends to the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Enter a room; answered by `created` (and `joined` to the others).
    Join { room: RoomId },
    /// An SDP offer for one member of the same room.
    Offer {
        to: PeerId,
        sdp: String,
        #[serde(flatten)]
        extra: Extra,
    },
    /// An SDP answer for one member of the same room.
    Answer {
        to: PeerId,
        sdp: String,
        #[serde(flatten)]
        extra: Extra,
    },
    /// A trickled ICE candidate for one member of the same room.
    Candidate {
        to: PeerId,
        candidate: IceCandidate,
        #[serde(flatten)]
        extra: Extra,
    },
    /// Leave the room; the others get `exit`.
    Leave,
}

impl ClientMessage {
    pub fn offer(to: PeerId, sdp: impl Into<String>) -> Self {
        ClientMessage::Offer { to, sdp: sdp.into(), extra: Extra::new() }
    }

    pub fn answer(to: PeerId, sdp: impl Into<String>) -> Self {
        ClientMessage::Answer { to, sdp: sdp.into(), extra: Extra::new() }
    }

    pub fn candidate(to: PeerId, candidate: IceCandidate) -> Self {
        ClientMessage::Candidate { to, candidate, extra: Extra::new() }
    }

    /// The wire name of this message (`"offer"`, ...), for logs and metrics.
    pub fn kind(&self) -> MessageKind {
        match self {
            ClientMessage::Join { .. } => MessageKind::Join,
            ClientMessage::Offer { .. } => MessageKind::Offer,
            ClientMessage::Answer { .. } => MessageKind::Answer,
            ClientMessage::Candidate { .. } => MessageKind::Candidate,
            ClientMessage::Leave => MessageKind::Leave,
        }
    }

    /// The addressee of a message to be relayed, if it is one.
    pub fn target(&self) -> Option<&PeerId> {
        match self {
            ClientMessage::Offer { to, .. }
            | ClientMessage::Answer { to, .. }
            | ClientMessage::Candidate { to, .. } => Some(to),
            ClientMessage::Join { .. } | ClientMessage::Leave => None,
        }
    }

    /// The message as delivered to its addressee: `from` and `room` added,
    /// a client's copy of any server-owned key dropped, everything else
    /// unchanged. `None` for messages that are not relayed. Every relay (one
    /// node, Redis, either transport) goes through here.
    pub fn relayed(self, from: PeerId, room: RoomId) -> Option<ServerMessage> {
        Some(match self {
            ClientMessage::Offer { to, sdp, mut extra } => {
                drop_server_keys(&mut extra);
                ServerMessage::Offer { from, to, room, sdp, extra }
            }
            ClientMessage::Answer { to, sdp, mut extra } => {
                drop_server_keys(&mut extra);
                ServerMessage::Answer { from, to, room, sdp, extra }
            }
            ClientMessage::Candidate { to, candidate, mut extra } => {
                drop_server_keys(&mut extra);
                ServerMessage::Candidate { from, to, room, candidate, extra }
            }
            ClientMessage::Join { .. } | ClientMessage::Leave => return None,
        })
    }
}

/// What the server sends to a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// To the joiner: its id, the members already there, and ICE servers.
    Created { id: PeerId, room: RoomId, peers: Vec<PeerId>, ice_servers: Vec<IceServer> },
    /// To every other member: someone entered.
    Joined { id: PeerId, room: RoomId },
    Offer {
        from: PeerId,
        to: PeerId,
        room: RoomId,
        sdp: String,
        #[serde(flatten)]
        extra: Extra,
    },
    Answer {
        from: PeerId,
        to: PeerId,
        room: RoomId,
        sdp: String,
        #[serde(flatten)]
        extra: Extra,
    },
    Candidate {
        from: PeerId,
        to: PeerId,
        room: RoomId,
        candidate: IceCandidate,
        #[serde(flatten)]
        extra: Extra,
    },
    /// To the remaining members: `from` left (or its connection died).
    Exit { from: PeerId, room: RoomId },
    /// To the sender of something refused; the connection stays open.
    Error { code: ErrorCode, message: String },
}

impl ServerMessage {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerMessage::Error { code, message: message.into() }
    }

    pub fn kind(&self) -> MessageKind {
        match self {
            ServerMessage::Created { .. } => MessageKind::Created,
            ServerMessage::Joined { .. } => MessageKind::Joined,
            ServerMessage::Offer { .. } => MessageKind::Offer,
            ServerMessage::Answer { .. } => MessageKind::Answer,
            ServerMessage::Candidate { .. } => MessageKind::Candidate,
            ServerMessage::Exit { .. } => MessageKind::Exit,
            ServerMessage::Error { .. } => MessageKind::Error,
        }
    }

    /// The JSON text of one frame.
    pub fn to_json(&self) -> String {
        // Only strings, numbers and maps with string keys: serialising cannot fail.
        serde_json::to_string(self)
            .unwrap_or_else(|_| r#"{"type":"error","code":"internal","message":"serialisation failed"}"#.into())
    }
}

/// Every `type` of the protocol, for logs and metrics labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    Join,
    Offer,
    Answer,
    Candidate,
    Leave,
    Created,
    Joined,
    Exit,
    Error,
}

impl MessageKind {
    /// Every kind, in the order metrics list them.
    pub const ALL: [MessageKind; 9] = [
        MessageKind::Join,
        MessageKind::Offer,
        MessageKind::Answer,
        MessageKind::Candidate,
        MessageKind::Leave,
        MessageKind::Created,
        MessageKind::Joined,
        MessageKind::Exit,
        MessageKind::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Join => "join",
            MessageKind::Offer => "offer",
            MessageKind::Answer => "answer",
            MessageKind::Candidate => "candidate",
            MessageKind::Leave => "leave",
            MessageKind::Created => "created",
            MessageKind::Joined => "joined",
            MessageKind::Exit => "exit",
            MessageKind::Error => "error",
        }
    }

    /// The kind named `name` (a `type` value), if there is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The `type` of a server message given as JSON text: read from the
    /// front when it comes first (as natkit writes it), else by a scan that
    /// builds nothing. `None` when it has none this protocol knows.
    pub fn of_json(json: &str) -> Option<Self> {
        if let Some(rest) = json.strip_prefix(r#"{"type":""#)
            && let Some((name, _)) = rest.split_once('"')
        {
            return Self::from_name(name);
        }
        #[derive(Deserialize)]
        struct Tag<'a> {
            #[serde(rename = "type", borrow)]
            kind: std::borrow::Cow<'a, str>,
        }
        serde_json::from_str::<Tag>(json).ok().and_then(|t| Self::from_name(&t.kind))
    }
}

/// Why a message was refused: the `code` of an `error` message (stable; the
/// `message` next to it is for people and may change).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, not an object, or a frame that is not text.
    BadJson,
    /// A `type` the protocol does not have.
    UnknownType,
    /// A known `type` with missing or ill-typed fields, or a bad room name.
    BadMessage,
    /// `offer`/`answer`/`candidate`/`leave` before `join`.
    NotJoined,
    /// `join` while already in a room (send `leave` first).
    AlreadyJoined,
    /// The `to` id is not a member of the sender's room.
    NotInRoom,
    /// The room has reached `--max-room` members.
    RoomFull,
    /// The frame is larger than `--max-frame` bytes.
    FrameTooLarge,
    /// More messages per second than the server allows.
    RateLimited,
    /// Too many connections from this IP address.
    TooManyConnections,
    /// Something went wrong inside the server (e.g. the Redis backplane).
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::AlreadyJoined => "already_joined",
            ErrorCode::NotInRoom => "not_in_room",
            ErrorCode::RoomFull => "room_full",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::Internal => "internal",
        }
    }
}

/// A refused message: what the sender gets back as `error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal { code, message: message.into() }
    }

    /// The `error` message to send back.
    pub fn to_message(&self) -> ServerMessage {
        ServerMessage::error(self.code, self.message.clone())
    }
}

/// Types the server understands, for telling "unknown type" from "bad fields".
const CLIENT_TYPES: [&str; 5] = ["join", "offer", "answer", "candidate", "leave"];

/// Parses one text frame from a client, or says precisely why not.
///
/// Most frames take the one-pass path ([`parse_fast`]); anything it does not
/// take (an error, a duplicate key, an odd type) goes through the general
/// path, which decides what the message is or why it is refused. The fast
/// path only ever returns what the general one would (unit-tested on both).
pub fn parse_client(text: &str) -> Result<ClientMessage, Refusal> {
    match parse_fast(text) {
        Some(m) => Ok(m),
        None => parse_general(text),
    }
}

/// One pass from the text to the final message, without a `Value` of the
/// whole object and without serde's buffering for `#[serde(flatten)]`:
/// `None` when the frame is anything but a well-formed message with each
/// key once (the general path then answers, with its exact refusal).
fn parse_fast(text: &str) -> Option<ClientMessage> {
    serde_json::from_str::<FastMessage>(text).ok().map(|f| f.0)
}

struct FastMessage(ClientMessage);

impl<'de> Deserialize<'de> for FastMessage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(FastVisitor)
    }
}

struct FastVisitor;

impl<'de> serde::de::Visitor<'de> for FastVisitor {
    type Value = FastMessage;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a signaling message object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<FastMessage, A::Error> {
        use serde::de::Error;
        let dup = || A::Error::custom("duplicate key");
        let (mut kind, mut to, mut sdp): (Option<MessageKind>, Option<String>, Option<String>) = (None, None, None);
        // `room` and `candidate` are typed or extra depending on `type`, which may come later.
        let (mut room, mut candidate): (Option<Value>, Option<Value>) = (None, None);
        let mut extra = Extra::new();
        // Extra keys in the order they came, as the general path keeps them.
        while let Some(key) = map.next_key::<FastKey>()? {
            match key {
                FastKey::Type if kind.is_none() => kind = Some(map.next_value()?),
                FastKey::To if to.is_none() => to = Some(map.next_value()?),
                FastKey::Sdp if sdp.is_none() => sdp = Some(map.next_value()?),
                FastKey::Room if room.is_none() => room = Some(map.next_value()?),
                FastKey::Candidate if candidate.is_none() => candidate = Some(map.next_value()?),
                FastKey::Other(k) => {
                    if extra.insert(k, map.next_value()?).is_some() {
                        return Err(dup());
                    }
                }
                _ => return Err(dup()),
            }
        }
        let missing = || A::Error::custom("missing field");
        let msg = match kind.ok_or_else(missing)? {
            MessageKind::Join => {
                let room = RoomId::deserialize(room.ok_or_else(missing)?).map_err(A::Error::custom)?;
                ClientMessage::Join { room }
            }
            MessageKind::Leave => ClientMessage::Leave,
            k @ (MessageKind::Offer | MessageKind::Answer) => {
                if room.is_some() || candidate.is_some() {
                    // Their place among the other extra keys is not known here.
                    return Err(A::Error::custom("server keys in an offer"));
                }
                let (to, sdp) = (PeerId(to.ok_or_else(missing)?), sdp.ok_or_else(missing)?);
                if k == MessageKind::Offer {
                    ClientMessage::Offer { to, sdp, extra }
                } else {
                    ClientMessage::Answer { to, sdp, extra }
                }
            }
            MessageKind::Candidate => {
                if room.is_some() || sdp.is_some() {
                    return Err(A::Error::custom("server keys in a candidate"));
                }
                let candidate = IceCandidate::deserialize(candidate.ok_or_else(missing)?).map_err(A::Error::custom)?;
                ClientMessage::Candidate { to: PeerId(to.ok_or_else(missing)?), candidate, extra }
            }
            _ => return Err(A::Error::custom("not a client type")),
        };
        Ok(FastMessage(msg))
    }
}

/// A key of a client message: the named ones without an allocation.
enum FastKey {
    Type,
    To,
    Sdp,
    Room,
    Candidate,
    Other(String),
}

impl<'de> Deserialize<'de> for FastKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = FastKey;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: serde::de::Error>(self, k: &str) -> Result<FastKey, E> {
                Ok(match k {
                    "type" => FastKey::Type,
                    "to" => FastKey::To,
                    "sdp" => FastKey::Sdp,
                    "room" => FastKey::Room,
                    "candidate" => FastKey::Candidate,
                    other => FastKey::Other(other.to_string()),
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// The general path: the whole object as a `Value`, then the message type.
fn parse_general(text: &str) -> Result<ClientMessage, Refusal> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| Refusal::new(ErrorCode::BadJson, format!("not valid JSON: {e}")))?;
    let Some(obj) = value.as_object() else {
        return Err(Refusal::new(ErrorCode::BadJson, "expected a JSON object with a \"type\" field"));
    };
    let kind = match obj.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(_) => return Err(Refusal::new(ErrorCode::BadMessage, "\"type\" must be a string")),
        None => return Err(Refusal::new(ErrorCode::BadMessage, "missing \"type\" field")),
    };
    if !CLIENT_TYPES.contains(&kind.as_str()) {
        let shown: String = kind.chars().take(40).collect();
        return Err(Refusal::new(
            ErrorCode::UnknownType,
            format!("unknown type \"{shown}\"; expected one of join, offer, answer, candidate, leave"),
        ));
    }
    serde_json::from_value(value).map_err(|e| Refusal::new(ErrorCode::BadMessage, format!("bad \"{kind}\": {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn to_value<T: Serialize>(v: &T) -> Value {
        serde_json::to_value(v).unwrap()
    }

    #[test]
    fn the_kind_of_a_server_message_is_read_from_its_json_in_any_key_order() {
        let offer = ClientMessage::offer("b".into(), "v=0").relayed("a".into(), "r".into()).unwrap();
        assert_eq!(MessageKind::of_json(&offer.to_json()), Some(MessageKind::Offer));
        // Redis' cjson writes keys in any order.
        assert_eq!(MessageKind::of_json(r#"{"room":"r","from":"a","type":"exit"}"#), Some(MessageKind::Exit));
        assert_eq!(MessageKind::of_json(r#"{"type":"bogus"}"#), None);
        assert_eq!(MessageKind::of_json(r#"{"room":"r"}"#), None);
        assert_eq!(MessageKind::of_json("not json"), None);
    }

    #[test]
    fn join_parses_string_and_numeric_rooms() {
        assert_eq!(
            parse_client(r#"{"type":"join","room":"abc"}"#).unwrap(),
            ClientMessage::Join { room: "abc".into() }
        );
        assert_eq!(parse_client(r#"{"type":"join","room":42}"#).unwrap(), ClientMessage::Join { room: "42".into() });
        assert_eq!(to_value(&ClientMessage::Join { room: "7".into() }), json!({"type":"join","room":"7"}));
    }

    #[test]
    fn created_has_exact_shape() {
        let m = ServerMessage::Created {
            id: "me".into(),
            room: "r".into(),
            peers: vec!["a".into(), "b".into()],
            ice_servers: vec![
                IceServer { urls: vec!["stun:127.0.0.1:3478".into()], username: None, credential: None },
                IceServer {
                    urls: vec!["turn:127.0.0.1:3478".into()],
                    username: Some("1700000000:me".into()),
                    credential: Some("pw".into()),
                },
            ],
        };
        let v = to_value(&m);
        assert_eq!(
            v,
            json!({"type":"created","id":"me","room":"r","peers":["a","b"],"ice_servers":[
                {"urls":["stun:127.0.0.1:3478"]},
                {"urls":["turn:127.0.0.1:3478"],"username":"1700000000:me","credential":"pw"}]})
        );
        assert_eq!(serde_json::from_value::<ServerMessage>(v).unwrap(), m);
    }

    #[test]
    fn ice_server_urls_may_be_a_single_string() {
        let s: IceServer = serde_json::from_value(json!({"urls":"stun:x"})).unwrap();
        assert_eq!(s.urls, vec!["stun:x".to_string()]);
    }

    #[test]
    fn joined_and_exit_have_exact_shape() {
        assert_eq!(
            to_value(&ServerMessage::Joined { id: "p".into(), room: "r".into() }),
            json!({"type":"joined","id":"p","room":"r"})
        );
        assert_eq!(
            to_value(&ServerMessage::Exit { from: "p".into(), room: "r".into() }),
            json!({"type":"exit","from":"p","room":"r"})
        );
    }

    #[test]
    fn relayed_offer_gains_from_and_room_and_keeps_other_fields() {
        let m = parse_client(r#"{"type":"offer","to":"b","sdp":"v=0","note":{"x":1}}"#).unwrap();
        assert_eq!(m.kind(), MessageKind::Offer);
        assert_eq!(m.target(), Some(&PeerId::from("b")));
        let out = m.relayed("a".into(), "r".into()).unwrap();
        assert_eq!(to_value(&out), json!({"type":"offer","from":"a","to":"b","room":"r","sdp":"v=0","note":{"x":1}}));
    }

    #[test]
    fn forged_server_keys_are_dropped_and_each_key_is_written_once() {
        let text = r#"{"type":"offer","to":"b","sdp":"v=0","from":"victim","room":"other","note":1}"#;
        let out = parse_client(text).unwrap().relayed("a".into(), "r".into()).unwrap();
        let json = out.to_json();
        for key in ["\"type\"", "\"from\"", "\"to\"", "\"room\"", "\"sdp\""] {
            assert_eq!(json.matches(key).count(), 1, "{key} once in {json}");
        }
        assert_eq!(to_value(&out), json!({"type":"offer","from":"a","to":"b","room":"r","sdp":"v=0","note":1}));
        // A message built in code (socket.io) with every server key in extra.
        let mut extra = Extra::new();
        for k in SERVER_KEYS {
            extra.insert(k.into(), json!("forged"));
        }
        let c = IceCandidate::new("candidate:1 1 udp 1 10.0.0.1 9 typ host", None, None);
        let out = ClientMessage::Candidate { to: "b".into(), candidate: c.clone(), extra }
            .relayed("a".into(), "r".into())
            .unwrap();
        let json = out.to_json();
        assert_eq!(json.matches("forged").count(), 0, "{json}");
        assert_eq!(
            to_value(&out),
            json!({"type":"candidate","from":"a","to":"b","room":"r","candidate":{"candidate":c.candidate}})
        );
    }

    #[test]
    fn relayed_answer_has_exact_shape() {
        let out = ClientMessage::answer("b".into(), "v=0").relayed("a".into(), "r".into()).unwrap();
        assert_eq!(to_value(&out), json!({"type":"answer","from":"a","to":"b","room":"r","sdp":"v=0"}));
    }

    #[test]
    fn relayed_candidate_keeps_browser_fields() {
        let text = r#"{"type":"candidate","to":"b","candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"uf"}}"#;
        let out = parse_client(text).unwrap().relayed("a".into(), "r".into()).unwrap();
        let v = to_value(&out);
        assert_eq!(
            v,
            json!({"type":"candidate","from":"a","to":"b","room":"r","candidate":{
                "candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"uf"}})
        );
        // And a client reads it back into the same typed value.
        assert_eq!(serde_json::from_value::<ServerMessage>(v).unwrap(), out);
    }

    #[test]
    fn leave_has_exact_shape() {
        assert_eq!(parse_client(r#"{"type":"leave"}"#).unwrap(), ClientMessage::Leave);
        assert_eq!(to_value(&ClientMessage::Leave), json!({"type":"leave"}));
        assert_eq!(ClientMessage::Leave.relayed("a".into(), "r".into()), None);
    }

    #[test]
    fn error_has_type_code_and_message() {
        assert_eq!(
            to_value(&ServerMessage::error(ErrorCode::NotInRoom, "x")),
            json!({"type":"error","code":"not_in_room","message":"x"})
        );
        for c in [ErrorCode::BadJson, ErrorCode::TooManyConnections, ErrorCode::FrameTooLarge] {
            assert_eq!(to_value(&c), json!(c.as_str()));
        }
    }

    fn code_of(text: &str) -> ErrorCode {
        match parse_client(text) {
            Err(r) => r.code,
            other => panic!("expected an error for {text}, got {other:?}"),
        }
    }

    #[test]
    fn bad_input_is_classified() {
        assert_eq!(code_of("{not json"), ErrorCode::BadJson);
        assert_eq!(code_of("[1,2]"), ErrorCode::BadJson);
        assert_eq!(code_of(r#"{"room":"r"}"#), ErrorCode::BadMessage);
        assert_eq!(code_of(r#"{"type":7}"#), ErrorCode::BadMessage);
        assert_eq!(code_of(r#"{"type":"dance"}"#), ErrorCode::UnknownType);
        assert_eq!(code_of(r#"{"type":"offer","to":"b"}"#), ErrorCode::BadMessage);
        assert_eq!(code_of(r#"{"type":"join","room":{"a":1}}"#), ErrorCode::BadMessage);
        assert_eq!(code_of(r#"{"type":"candidate","to":"b","candidate":"x"}"#), ErrorCode::BadMessage);
    }

    #[test]
    fn the_fast_parse_gives_what_the_general_one_gives_or_nothing() {
        let corpus = [
            r#"{"type":"join","room":"abc"}"#,
            r#"{"type":"join","room":42,"to":"x","extra":[1]}"#,
            r#"{"room":-7,"type":"join"}"#,
            r#"{"type":"join","room":{"a":1}}"#,
            r#"{"type":"join"}"#,
            r#"{"type":"leave"}"#,
            r#"{"type":"leave","note":1,"to":5}"#,
            r#"{"type":"offer","to":"b","sdp":"v=0"}"#,
            r#"{"sdp":"v=0\r\n\u00e9","note":{"x":[1,2.5,-3,1e400]},"to":"b","type":"offer"}"#,
            r#"{"type":"offer","to":"b","sdp":"v=0","from":"victim","room":"other","note":1}"#,
            r#"{"type":"offer","to":"b","sdp":"v=0","candidate":"x","z":1,"a":2}"#,
            r#"{"type":"offer","to":"b","sdp":"v=0","to":"c"}"#,
            r#"{"type":"offer","to":"b","sdp":"v=0","n":1,"n":2}"#,
            r#"{"type":"offer","type":"answer","to":"b","sdp":"v=0"}"#,
            r#"{"type":"answer","to":"b","sdp":"v=0","x":null}"#,
            r#"{"type":"offer","to":"b"}"#,
            r#"{"type":"offer","to":7,"sdp":"v=0"}"#,
            r#"{"type":"candidate","to":"b","candidate":{"candidate":"c","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"u"}}"#,
            r#"{"type":"candidate","to":"b","candidate":{"candidate":""},"sdp":"x","room":"r"}"#,
            r#"{"type":"candidate","to":"b","candidate":"x"}"#,
            r#"{"type":"candidate","to":"b","candidate":{"candidate":"c","sdpMLineIndex":70000}}"#,
            r#"{"type":"created"}"#,
            r#"{"type":"dance"}"#,
            r#"{"type":7}"#,
            r#"{"room":"r"}"#,
            r#"[1,2]"#,
            r#"{not json"#,
            r#"{"type":"leave"} x"#,
            r#"{"type":"\u006ffer","to":"b","sdp":"v=0"}"#,
        ];
        let mut fast_taken = vec![];
        for text in corpus {
            let general = parse_general(text);
            match parse_fast(text) {
                Some(m) => {
                    fast_taken.push(text);
                    assert_eq!(Ok(&m), general.as_ref(), "{text}");
                    // Same keys in the same order once relayed (byte for byte).
                    if let Some(out) = m.relayed("a".into(), "r".into()) {
                        let g = general.clone().unwrap().relayed("a".into(), "r".into()).unwrap();
                        assert_eq!(out.to_json(), g.to_json(), "{text}");
                    }
                }
                None => assert_eq!(parse_client(text), general, "{text}"),
            }
        }
        // The everyday messages take the fast path.
        for i in [0, 1, 5, 7, 14, 17] {
            assert!(fast_taken.contains(&corpus[i]), "not taken by the fast path: {}", corpus[i]);
        }
    }

    #[test]
    fn peer_ids_are_long_and_distinct() {
        let a = PeerId::random();
        let b = PeerId::random();
        assert_eq!(a.as_str().len(), 22);
        assert_ne!(a, b);
    }

    #[test]
    fn room_names_are_checked() {
        assert!(RoomId::from("1").problem().is_none());
        assert!(RoomId::from("").problem().is_some());
        assert!(RoomId::from("a\nb").problem().is_some());
        assert!(RoomId("x".repeat(RoomId::MAX_LEN + 1)).problem().is_some());
    }
}
