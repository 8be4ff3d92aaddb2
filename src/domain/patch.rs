//! `Patch<T>`: the three states of a field in a partial update — absent (keep the
//! stored value), `null` (clear it) or a value (set it).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One field of a partial update.
///
/// On the wire (serde) an absent field is `Keep` (use `#[serde(default,
/// skip_serializing_if = "Patch::is_keep")]`), `null` is `Clear`, any other value is
/// `Set`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Patch<T> {
    #[default]
    Keep,
    Clear,
    Set(T),
}

impl<T> Patch<T> {
    pub fn is_keep(&self) -> bool {
        matches!(self, Patch::Keep)
    }

    /// The value to store given the current one: `None` means NULL.
    pub fn apply<'a>(&'a self, current: Option<&'a T>) -> Option<&'a T> {
        match self {
            Patch::Keep => current,
            Patch::Clear => None,
            Patch::Set(value) => Some(value),
        }
    }

    /// The value a newly created row gets.
    pub fn initial(&self) -> Option<&T> {
        self.apply(None)
    }
}

impl<T: Serialize> Serialize for Patch<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Patch::Keep | Patch::Clear => serializer.serialize_none(),
            Patch::Set(value) => value.serialize(serializer),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Patch<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match Option::<T>::deserialize(deserializer)? {
            None => Patch::Clear,
            Some(value) => Patch::Set(value),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Item {
        #[serde(default, skip_serializing_if = "Patch::is_keep")]
        email: Patch<String>,
    }

    #[test]
    fn absent_null_and_value_round_trip() {
        for (json, patch) in [
            ("{}", Patch::Keep),
            (r#"{"email":null}"#, Patch::Clear),
            (r#"{"email":"a@b.c"}"#, Patch::Set("a@b.c".to_string())),
        ] {
            let item: Item = serde_json::from_str(json).unwrap();
            assert_eq!(item.email, patch);
            assert_eq!(serde_json::to_string(&item).unwrap(), json);
        }
    }

    #[test]
    fn apply_keeps_clears_or_sets() {
        let stored = "old".to_string();
        assert_eq!(Patch::Keep.apply(Some(&stored)), Some(&stored));
        assert_eq!(Patch::<String>::Clear.apply(Some(&stored)), None);
        let new = Patch::Set("new".to_string());
        assert_eq!(new.apply(Some(&stored)).map(String::as_str), Some("new"));
    }
}
