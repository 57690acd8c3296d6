//! Signaling (`natkit signal`): the `/ws` protocol types, a client for it,
//! the room registry core, and the server that serves the video-chat page.

pub mod client;
pub mod protocol;
pub mod limits;
pub mod rooms;
