//! ptfile
