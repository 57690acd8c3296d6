//! STUN and TURN server flags shared by `call` and `punch`: where a peer gathers its
//! server-reflexive and relayed candidates (RFC 8445 §5.1.1).

use clap::Args;

#[derive(Debug, Args)]
pub struct IceServerArgs {
    /// STUN server for a server-reflexive candidate (repeatable): HOST[:PORT] or stun:HOST[:PORT].
    /// Without --stun and --turn, the STUN/TURN servers the signaling server hands out are used
    #[arg(long, value_name = "URL")]
    pub stun: Vec<String>,

    /// TURN server for a relayed candidate (UDP): HOST[:PORT] or turn:HOST[:PORT]
    #[arg(long, value_name = "URL")]
    pub turn: Option<String>,

    /// TURN long-term credential username (with --turn-password)
    #[arg(long, value_name = "U", requires = "turn", conflicts_with = "turn_secret")]
    pub turn_user: Option<String>,

    /// TURN long-term credential password
    #[arg(long, value_name = "P", requires = "turn_user")]
    pub turn_password: Option<String>,

    /// TURN REST API shared secret (coturn use-auth-secret): natkit makes time-limited credentials
    #[arg(long, value_name = "S", requires = "turn")]
    pub turn_secret: Option<String>,

    /// Offer only the TURN relayed candidate: all traffic goes through the relay (TURN from
    /// --turn, or from the signaling server's ice_servers)
    #[arg(long)]
    pub relay_only: bool,
}
