//! The node's actors, one concern each, talking through typed messages.
//!
//! ```text
//!  HTTP (actix-web) --GetStatus--> DiscoveryActor --Routes?--> RelayActor
//!                   --Routes-----> RelayActor
//!  ListenerActor --start--> PeerActor (acceptor)        DiscoveryActor --start/Redial/CloseLink--> PeerActor (dialer, supervised)
//!  ListenerActor --UdpIn--> PeerActor                   PeerActor --Admit/LinkDown--> DiscoveryActor --LinkUp/LinkDown--> RelayActor
//!  PeerActor --RegisterDial/Unregister--> ListenerActor (UDP)
//!  CryptoActor: loads the identity; hands the KeyRing to the node at start
//!  RelayActor --Publish--> EventActor <--Subscribe-- HTTP (/events, /events/ws)
//! ```

pub mod crypto;
pub mod discovery;
pub mod events;
pub mod lan;
pub mod listener;
pub mod messages;
pub mod peer;
pub mod relay;
pub mod script;
pub mod store;
