//! CryptoActor: the node's key material.
//!
//! It loads the long-term identity from `data_dir` (creating it, mode 0600, on first start),
//! derives the network key from the secret, and hands the bundle out as an `Arc<KeyRing>`.
//! Links run their Noise handshakes with that bundle inside their own actor: a handshake is
//! ~3 X25519 operations (~100 us each here), and a round trip to another actor per handshake
//! or per frame would only add latency.

use std::sync::Arc;

use actix::prelude::*;
use log::info;

use crate::config::Config;
use crate::identity::{Identity, IdentityError};
use crate::keys::KeyRing;
use crate::proto::handshake::NetworkKey;

/// Asks for the key bundle.
#[derive(Message)]
#[rtype(result = "Arc<KeyRing>")]
pub struct GetKeyRing;

/// See the module docs.
pub struct CryptoActor {
    keys: Arc<KeyRing>,
}

impl CryptoActor {
    /// Loads or creates the identity in `config.data_dir` and derives the network key.
    pub fn load(config: &Config) -> Result<CryptoActor, IdentityError> {
        let identity = Identity::load_or_create(&config.data_dir)?;
        info!(
            "identity {} (from {})",
            hex::encode(identity.public()),
            config.data_dir.display()
        );
        let network_key = NetworkKey::derive(&config.network, config.secret.expose());
        Ok(CryptoActor {
            keys: Arc::new(KeyRing {
                identity,
                network_key,
            }),
        })
    }
}

impl Actor for CryptoActor {
    type Context = Context<Self>;
}

impl Handler<GetKeyRing> for CryptoActor {
    type Result = Arc<KeyRing>;

    fn handle(&mut self, _: GetKeyRing, _: &mut Self::Context) -> Arc<KeyRing> {
        self.keys.clone()
    }
}
