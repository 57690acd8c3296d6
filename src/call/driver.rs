//! The call's driver: placeholder until the socket/signaling loop lands.
