//! Serde helper: binary fields travel as standard base64 strings inside JSON
//! control messages (`#[serde(with = "alpacon_proto::b64")]`).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Deserializer, Serializer};

pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&STANDARD.encode(bytes))
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    STANDARD
        .decode(s.as_bytes())
        .map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct T {
        #[serde(with = "super")]
        b: Vec<u8>,
    }

    #[test]
    fn roundtrips_arbitrary_bytes() {
        let t = T {
            b: (0..=255u8).collect(),
        };
        let s = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<T>(&s).unwrap(), t);
    }

    #[test]
    fn rejects_invalid_base64() {
        assert!(serde_json::from_str::<T>(r#"{"b":"!!"}"#).is_err());
    }
}
