//! Two backends linked in (`inventory::submit!`) for one device type: `Registry::try_default`
//! refuses naming both, `Registry::default` keeps the first and records the conflict, and a
//! load that needs that device type is refused with the same message while other loads work.

use std::sync::Arc;

use ptfile::backend::{
    Availability, Backend, BackendError, BackendRegistration, DeviceStorage, HostStorage,
    StorageDesc,
};
use ptfile::{Error, Loader, MapLocation, Registry};

struct First;
struct Second;

macro_rules! npu {
    ($t:ty) => {
        impl Backend for $t {
            fn device_type(&self) -> &str {
                "npu"
            }
            fn availability(&self) -> Availability {
                Availability::Available { devices: 1 }
            }
            fn materialize(
                &self,
                _index: Option<usize>,
                _desc: &StorageDesc<'_>,
                bytes: &[u8],
            ) -> Result<Box<dyn DeviceStorage>, BackendError> {
                Ok(Box::new(HostStorage::new("npu:0".into(), bytes.to_vec())))
            }
        }
    };
}
npu!(First);
npu!(Second);

fn first() -> Arc<dyn Backend> {
    Arc::new(First)
}
fn second() -> Arc<dyn Backend> {
    Arc::new(Second)
}
ptfile::backend::inventory::submit! { BackendRegistration { priority: 40, make: first } }
ptfile::backend::inventory::submit! { BackendRegistration { priority: 41, make: second } }

const FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/seed_mymodule_state_dict.pt"
);

#[test]
fn two_linked_backends_for_one_device_type_are_an_error_naming_both() {
    let e = Registry::try_default().unwrap_err().to_string();
    assert!(e.contains("First") && e.contains("Second"), "{e}");
    let r = Registry::default();
    assert_eq!(r.conflicts().len(), 1);
    assert_eq!(r.conflicts()[0].device_type, "npu");

    let e = Loader::new()
        .map_location(MapLocation::to("npu:0"))
        .load(FILE)
        .unwrap_err();
    assert!(matches!(e, Error::Usage(_)), "{e}");
    assert!(
        e.to_string().contains("First") && e.to_string().contains("Second"),
        "{e}"
    );
    // Loads that do not need the contested device type are not affected.
    let ok = Loader::new()
        .map_location(MapLocation::to("cpu"))
        .load(FILE)
        .unwrap();
    assert!(ok.report.fallbacks().next().is_none());
}
