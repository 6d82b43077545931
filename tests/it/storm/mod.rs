//! Reply-all storms: simulated through the engine with the clock passed in, and sent for real
//! through the proxy (and the milter) in front of Postfix.

mod people;
mod proxy;
mod sim;
mod split;
