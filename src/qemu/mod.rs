//! QEMU: acceleration choice, the argv builder, the process and its QMP socket.
