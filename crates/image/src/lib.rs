//! strata-image
