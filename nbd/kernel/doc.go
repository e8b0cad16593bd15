// Package kernel hands NBD connections to the Linux kernel's NBD client:
// through the generic netlink family "nbd" (connect, reconfigure,
// disconnect, status, and LINK_DEAD notifications), or through the older
// ioctl interface on kernels without it.
//
// Attach negotiates in userspace through package nbd and hands the
// sockets over (attach.go, and attach_ioctl.go for NBD_DO_IT's thread and
// its readiness); a Dialer reaches the server, or with ServeDialer an
// *nbd.Server in this process over socket pairs. What follows an attach
// (waiting, reconnecting a persistent device, disconnecting) is
// lifetime.go. Netlink is the Netlink type (netlink.go), the ioctls
// ioctl.go, what sysfs says of each device sysfs.go. Keeping a device held by a background process,
// and the records of it, are package hold's.
//
// Everything here needs CAP_SYS_ADMIN and an nbd module (modprobe nbd).
// The nbd netlink family is registered only in the initial network
// namespace; OpenNetlink opens its socket there even when the caller lives in
// another one, so the connections handed over may belong to any namespace.
//
// With netlink the kernel holds its own reference to each socket, so the
// process that connected may exit. With ioctls a process must stay inside
// NBD_DO_IT for as long as the device is connected; IoctlConnect blocks.
// Linux only.
package kernel
