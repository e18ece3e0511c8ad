//! The web page ferry serves at `/`, embedded in the binary. (Being written.)
