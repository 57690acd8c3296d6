//! A peer's part in a session, as the video-chat page assigns it over the signaling server: whoever
//! joins the room second sends the SDP offer (RFC 3264) and is ICE controlling (RFC 8445 §6.1.1);
//! the first waits and answers. One type for the reports of `call` and `punch`.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Joined second: offers, controls ICE (and in punch is the QUIC client).
    Offerer,
    /// Joined first: waits for the offer and answers.
    Answerer,
}

impl Role {
    /// Joined a room that already had members: the newcomer offers.
    pub fn on_joining(others_present: bool) -> Self {
        if others_present { Role::Offerer } else { Role::Answerer }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Offerer => "offerer",
            Role::Answerer => "answerer",
        })
    }
}
