//! Link bundles (`LinkBundle::open`, `docs/devices.md`).
//!
//! The input is tried as a sealed bundle (framing checks before the AEAD),
//! then as the opened form, sealed for the fixed new device by the
//! documented layout (`kith_fuzz::seal_bundle`) so that the opened-form
//! decoder, the device list decoder and the bundle checks behind the AEAD
//! are reached. A bundle that opens is re-sealed by the real sealer with
//! the same nonce: the opened form has fixed-width fields and a canonical
//! device list, so that gives back the same bytes, and it opens again to
//! the same bundle.

#![no_main]

use kith_fuzz::{BUNDLE_NONCE, link_secret, new_device, seal_bundle};
use kith_proto::LinkBundle;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let secret = link_secret();
    let device = new_device();
    let _ = LinkBundle::open(data, &secret, &device);

    let sealed = seal_bundle(&secret, &device, data);
    let Ok(bundle) = LinkBundle::open(&sealed, &secret, &device) else {
        return;
    };
    let again = bundle
        .seal_with(&secret, &device, BUNDLE_NONCE)
        .expect("an opened bundle seals");
    assert_eq!(again, sealed);
    let reopened = LinkBundle::open(&again, &secret, &device).expect("reopens");
    assert_eq!(reopened.account.public(), bundle.account.public());
    assert_eq!(reopened.nospam, bundle.nospam);
    assert_eq!(reopened.display_name, bundle.display_name);
    assert_eq!(reopened.device_list, bundle.device_list);
    assert_eq!(reopened.sync, bundle.sync);
});
