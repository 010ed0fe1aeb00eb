//! `map_location` in all of torch's forms: as saved, one location for everything, a table
//! old -> new, and a function of (storage, saved location).

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::torch::model::Storage;
use ptfile_backend::Location;

/// A function form of map_location: returns the new location, or None for "as saved"
/// (torch's callable returning None falls back to the default restore).
pub type MapFn = dyn Fn(&Storage, &str) -> Option<String> + Send + Sync;

/// Where storages should go.
#[derive(Clone, Default)]
pub enum MapLocation {
    /// Each storage to the location saved in the file (torch's `map_location=None`).
    #[default]
    AsSaved,
    /// Every storage to one location (`map_location="cpu"`).
    To(String),
    /// A table old -> new (`{"cuda:1": "cuda:0"}`); unlisted locations stay as saved.
    Table(Vec<(String, String)>),
    /// A function of (storage, saved location).
    Func(Arc<MapFn>),
}

impl fmt::Debug for MapLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapLocation::AsSaved => f.write_str("AsSaved"),
            MapLocation::To(l) => write!(f, "To({l:?})"),
            MapLocation::Table(t) => write!(f, "Table({t:?})"),
            MapLocation::Func(_) => f.write_str("Func(..)"),
        }
    }
}

impl MapLocation {
    /// One location for everything.
    pub fn to(loc: impl Into<String>) -> MapLocation {
        MapLocation::To(loc.into())
    }

    /// A table from pairs.
    pub fn table<I, A, B>(pairs: I) -> MapLocation
    where
        I: IntoIterator<Item = (A, B)>,
        A: Into<String>,
        B: Into<String>,
    {
        MapLocation::Table(
            pairs
                .into_iter()
                .map(|(a, b)| (a.into(), b.into()))
                .collect(),
        )
    }

    /// A function.
    pub fn func(
        f: impl Fn(&Storage, &str) -> Option<String> + Send + Sync + 'static,
    ) -> MapLocation {
        MapLocation::Func(Arc::new(f))
    }

    /// Parses the CLI form: each spec is `LOC` (everything there) or `OLD=NEW` (repeatable).
    /// `LOC` may appear once and not together with a table.
    pub fn parse_specs<S: AsRef<str>>(specs: &[S]) -> Result<MapLocation> {
        let mut to: Option<String> = None;
        let mut table = Vec::new();
        for s in specs {
            let s = s.as_ref().trim();
            match s.split_once('=') {
                Some((a, b)) => {
                    check(a)?;
                    check(b)?;
                    table.push((a.to_string(), b.to_string()));
                }
                None => {
                    check(s)?;
                    if to.replace(s.to_string()).is_some() {
                        return Err(Error::Usage(format!(
                            "--map-location {s}: only one plain location may be given; use OLD=NEW for more"
                        )));
                    }
                }
            }
        }
        match (to, table.is_empty()) {
            (None, true) => Ok(MapLocation::AsSaved),
            (Some(l), true) => Ok(MapLocation::To(l)),
            (None, false) => Ok(MapLocation::Table(table)),
            (Some(_), false) => Err(Error::Usage(
                "--map-location: give either one LOC or OLD=NEW pairs, not both".into(),
            )),
        }
    }

    /// Where `storage`, saved at `saved`, goes.
    pub fn apply(&self, storage: &Storage, saved: &str) -> String {
        match self {
            MapLocation::AsSaved => saved.to_string(),
            MapLocation::To(l) => l.clone(),
            MapLocation::Table(t) => t
                .iter()
                .find(|(a, _)| a == saved)
                .map(|(_, b)| b.clone())
                .unwrap_or_else(|| saved.to_string()),
            MapLocation::Func(f) => f(storage, saved).unwrap_or_else(|| saved.to_string()),
        }
    }
}

fn check(loc: &str) -> Result<()> {
    Location::parse(loc)
        .map(|_| ())
        .map_err(|e| Error::Usage(format!("--map-location: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::torch::dtype::DType;

    fn st() -> Storage {
        Storage {
            key: "0".into(),
            dtype: DType::FLOAT32,
            location: "cuda:1".into(),
            nbytes: 4,
            data: None,
            typed: true,
        }
    }

    #[test]
    fn forms() {
        let s = st();
        assert_eq!(MapLocation::AsSaved.apply(&s, "cuda:1"), "cuda:1");
        assert_eq!(MapLocation::to("cpu").apply(&s, "cuda:1"), "cpu");
        let t = MapLocation::table([("cuda:1", "cuda:0")]);
        assert_eq!(t.apply(&s, "cuda:1"), "cuda:0");
        assert_eq!(t.apply(&s, "ipu"), "ipu");
        let f = MapLocation::func(|st, loc| {
            (st.nbytes == 4 && loc.starts_with("cuda")).then(|| "cpu".to_string())
        });
        assert_eq!(f.apply(&s, "cuda:1"), "cpu");
        assert_eq!(f.apply(&s, "ipu"), "ipu");
    }

    #[test]
    fn parse() {
        assert!(matches!(
            MapLocation::parse_specs::<&str>(&[]).unwrap(),
            MapLocation::AsSaved
        ));
        assert!(
            matches!(MapLocation::parse_specs(&["cpu"]).unwrap(), MapLocation::To(l) if l == "cpu")
        );
        assert!(
            matches!(MapLocation::parse_specs(&["cuda:1=cuda:0", "ipu=cpu"]).unwrap(), MapLocation::Table(t) if t.len() == 2)
        );
        assert!(MapLocation::parse_specs(&["cpu", "cuda:0"]).is_err());
        assert!(MapLocation::parse_specs(&["cpu", "a=b"]).is_err());
        assert!(MapLocation::parse_specs(&["cuda:x"]).is_err());
    }
}
