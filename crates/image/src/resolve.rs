//! Finding an image by what the user typed, building the default image (`busybox`) on first
//! use, and holding the image for a container — above both the store (store.rs) and the
//! default image's builder (default_image.rs), which writes through the store.

use crate::error::{Error, Result};
use crate::image::Image;
use crate::store::Store;

impl Store {
    /// Finds an image by name (`busybox`, `repo:tag`), manifest digest or ID prefix.
    ///
    /// The name `busybox` builds the default image on first use when it is absent.
    pub fn resolve(&self, name: &str) -> Result<Image> {
        match self.resolve_existing(name) {
            Err(Error::ImageNotFound(_)) if crate::default_image::is_default_name(name) => {
                crate::default_image::build(self, &crate::progress::NoProgress)?;
                self.resolve_existing(name)
            }
            r => r,
        }
    }

    /// Resolves `name` and holds it for `holder` in one step, under the store lock, so an
    /// `image prune` running at the same time cannot remove its layers in between.
    pub fn resolve_and_hold(&self, name: &str, holder: &str) -> Result<Image> {
        let found = self.resolve(name)?;
        let _lock = self.store_lock(false)?;
        // Reload under the lock: a prune may have run since `resolve` returned.
        let image = Image::load(
            self,
            found.name().map(str::to_string),
            found.digest().clone(),
        )?;
        self.hold(holder, &image)?;
        Ok(image)
    }
}
