//! strata-agent
