//! Reply-all storms: simulated through the engine with the clock passed in, and sent for real
//! through the proxy (and the milter) in front of Postfix.

mod both;
mod figures;
mod ids;
mod people;
mod proxy;
mod restart;
mod sim;
mod split;
