//! The project state folder `.qemu-compose/`: layout, lock, atomic writes, volumes.json, instance records.
