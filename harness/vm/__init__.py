"""VMs: booting kernels with virtme-ng, and the guest agent shipped into them."""
