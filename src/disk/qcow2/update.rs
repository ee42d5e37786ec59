//! Changing an existing image in place, as one copy-on-write transaction that one header write
//! makes visible.
//!
//! Nothing the old header reaches is modified before the commit. A guest cluster written in the
//! transaction gets a new host cluster, taken first from clusters whose refcount is 0 in the old
//! refcount table (holes earlier transactions left), then from the end of the file; only the
//! mapping guest cluster -> new host cluster is kept in memory. [`Qcow2Update::commit`] writes
//! copies of the changed L2 tables, a new L1 table, new refcount blocks for every block whose
//! counts change and a new refcount table, all into clusters the old image does not use, syncs,
//! then switches `l1_table_offset`, `refcount_table_offset` and `refcount_table_clusters` (bytes
//! 40..60 of the header, inside one sector) in one write, syncs again and only then punches the
//! freed clusters out of the file. A crash before the header write leaves the old image, whose
//! refcounts never counted the new clusters: no errors and no leaks. A crash after it leaves the
//! new image, with the old clusters at refcount 0.
//!
//! Refused: backing files, external data files, encryption, internal snapshots, the dirty and
//! corrupt bits, autoclear features (persistent bitmaps would go stale), refcount widths other
//! than 16 bits and clusters shared by two references. Compressed clusters may stay in the
//! image, but reading one, or writing into its guest cluster, is refused.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use rustix::fs::FallocateFlags;

use super::header::{INCOMPAT_DIRTY, be64};
use super::reader::{
    COMPRESSED, OFFSET_MASK, READS_AS_ZERO, ReadAt, read_checked, validate_header,
};
use super::writer::COPIED;
use super::{Header, Qcow2Error};
use crate::disk::sink::{BlockSink, BlockSource};

/// Byte offset of `l1_table_offset` in the header; `refcount_table_offset` and
/// `refcount_table_clusters` follow it, so the three are one 20-byte write.
const SWITCH_OFFSET: u64 = 40;

/// The file an update writes through. Every change to the file goes through these methods, so a
/// test can make any one of them fail and look at what a crash at that point leaves.
pub trait UpdateStorage: ReadAt {
    /// Writes all of `buf` at `offset`, extending the file if needed.
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Flushes the data written so far to stable storage.
    fn sync_data(&mut self) -> io::Result<()>;
    /// Frees the storage of `len` bytes at `offset`, which then read as zeros; the file's length
    /// does not change.
    fn punch_hole(&mut self, offset: u64, len: u64) -> io::Result<()>;
    /// Cuts the file to `len` bytes.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
}

impl UpdateStorage for File {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn punch_hole(&mut self, offset: u64, len: u64) -> io::Result<()> {
        rustix::fs::fallocate(
            &*self,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            offset,
            len,
        )
        .map_err(io::Error::from)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
}

/// An open update transaction on a qcow2 image. Dropping it without [`Qcow2Update::commit`]
/// leaves the old image exactly as it was (plus unreferenced clusters at refcount 0).
pub struct Qcow2Update<S: UpdateStorage = File> {
    storage: S,
    header: Header,
    /// The old L1 table, all `l1_size` entries.
    l1: Vec<u64>,
    /// The old refcount table, all its entries.
    refcount_table: Vec<u64>,
    /// The old refcount of every cluster up to the first one past the file and every counted
    /// cluster.
    refcounts: Vec<u16>,
    /// Guest cluster -> host offset of its new cluster.
    mapping: BTreeMap<u64, u64>,
    /// The next cluster index to look at for a hole.
    hole_scan: u64,
    /// Clusters at or past this index are neither in the file nor counted: free to append.
    end: u64,
    /// A write failed part way: the mapping may name clusters holding the wrong bytes.
    failed: bool,
}

impl<S: UpdateStorage> std::fmt::Debug for Qcow2Update<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2Update")
            .field("header", &self.header)
            .field("written_clusters", &self.mapping.len())
            .field("end_cluster", &self.end)
            .finish_non_exhaustive()
    }
}

/// What uses a cluster of the old image, as found by walking its tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum User {
    None,
    Plain,
    Compressed,
}

/// Where an old guest cluster's bytes are.
enum Old {
    Host(u64),
    Zeros,
    Compressed,
}

impl Qcow2Update<File> {
    /// Starts a transaction on the image in `file`, opened for reading and writing. The image
    /// must not be in use by anything else (QEMU holds a lock on images it runs; the caller
    /// checks).
    pub fn open(file: File) -> Result<Self, Qcow2Error> {
        Self::open_storage(file)
    }
}

impl<S: UpdateStorage> Qcow2Update<S> {
    /// Like [`Qcow2Update::open`], on any storage.
    pub fn open_storage(storage: S) -> Result<Self, Qcow2Error> {
        let file_len = storage
            .size()
            .map_err(Qcow2Error::io("reading the image size"))?;
        let mut start = vec![0u8; file_len.min(Header::SIZE as u64) as usize];
        read_checked(&storage, file_len, &mut start, 0, "the header")?;
        let header = Header::decode(&start)?;
        refuse_unsupported(&header)?;
        validate_header(&header)?;
        let cs = header.cluster_size();

        let l2_entries = cs / 8;
        let needed = header.size.div_ceil(cs * l2_entries);
        if needed > u64::from(header.l1_size) {
            return Err(Qcow2Error::Corrupt(format!(
                "the L1 table has {} entries but the {}-byte disk needs {needed}",
                header.l1_size, header.size
            )));
        }
        let l1 = read_table(
            &storage,
            file_len,
            header.l1_table_offset,
            u64::from(header.l1_size) * 8,
            "the L1 table",
        )?;
        let rt_bytes = u64::from(header.refcount_table_clusters) * cs;
        let refcount_table = read_table(
            &storage,
            file_len,
            header.refcount_table_offset,
            rt_bytes,
            "the refcount table",
        )?;

        // Refcounts of every cluster the table counts; 16-bit entries, so cs / 2 per block.
        let per_block = cs / 2;
        let file_clusters = file_len.div_ceil(cs);
        let mut refcounts = vec![0u16; file_clusters as usize];
        let mut block = vec![0u8; cs as usize];
        for (i, &entry) in refcount_table.iter().enumerate() {
            let at = entry & OFFSET_MASK;
            if at == 0 {
                continue;
            }
            check_aligned(at, cs, "a refcount block")?;
            read_checked(&storage, file_len, &mut block, at, "a refcount block")?;
            let first = i as u64 * per_block;
            for (j, pair) in block.chunks_exact(2).enumerate() {
                let count = u16::from_be_bytes([pair[0], pair[1]]);
                if count == 0 {
                    continue;
                }
                // Counted clusters lie inside the file, whose length bounds the vector.
                let cluster = first + j as u64;
                if cluster >= file_clusters {
                    return Err(Qcow2Error::Corrupt(format!(
                        "cluster {cluster} past the end of the file has refcount {count}"
                    )));
                }
                refcounts[cluster as usize] = count;
            }
        }

        let update = Qcow2Update {
            storage,
            header,
            l1,
            refcount_table,
            refcounts,
            mapping: BTreeMap::new(),
            hole_scan: 0,
            end: file_clusters,
            failed: false,
        };
        update.check_references(file_len)?;
        Ok(update)
    }

    /// Checks that every cluster the old image uses has a refcount, so that no cluster taken
    /// as a hole is in use: a clean image satisfies this, and it costs one read of the tables.
    fn check_references(&self, file_len: u64) -> Result<(), Qcow2Error> {
        let cs = self.cluster_size();
        let h = &self.header;
        let mut users = vec![User::None; self.refcounts.len()];
        self.claim(&mut users, 0, 1, "the header")?;
        let l1_clusters = (u64::from(h.l1_size) * 8).div_ceil(cs);
        self.claim(
            &mut users,
            h.l1_table_offset / cs,
            l1_clusters,
            "the L1 table",
        )?;
        let rt_clusters = u64::from(h.refcount_table_clusters);
        let rt_first = h.refcount_table_offset / cs;
        self.claim(&mut users, rt_first, rt_clusters, "the refcount table")?;
        for at in self.refcount_table.iter().map(|e| e & OFFSET_MASK) {
            if at != 0 {
                self.claim(&mut users, at / cs, 1, "a refcount block")?;
            }
        }
        let mut table = vec![0u8; cs as usize];
        for at in self.l1.iter().map(|e| e & OFFSET_MASK) {
            if at == 0 {
                continue;
            }
            check_aligned(at, cs, "an L2 table")?;
            self.claim(&mut users, at / cs, 1, "an L2 table")?;
            read_checked(&self.storage, file_len, &mut table, at, "an L2 table")?;
            for e in table.chunks_exact(8).map(|e| be64(e, 0)) {
                let host = e & OFFSET_MASK;
                if e & COMPRESSED != 0 {
                    self.claim_compressed(&mut users, e)?;
                } else if host != 0 {
                    check_aligned(host, cs, "a data cluster")?;
                    self.claim(&mut users, host / cs, 1, "a data cluster")?;
                }
            }
        }
        Ok(())
    }

    /// Records that `what` uses the `n` clusters from cluster `first`, which must have
    /// refcount 1 and no other user: a refcount of 0 would let them be taken as holes, and a
    /// cluster used twice would be freed while still in use.
    fn claim(&self, users: &mut [User], first: u64, n: u64, what: &str) -> Result<(), Qcow2Error> {
        for c in first..first.saturating_add(n) {
            match self.old_refcount(c) {
                1 => {}
                0 => {
                    return Err(Qcow2Error::Corrupt(format!(
                        "{what} uses cluster {c}, whose refcount is 0; `qemu-img check -r all` \
                         repairs the refcounts"
                    )));
                }
                count => {
                    return Err(Qcow2Error::NotUpdatable(format!(
                        "{what} uses cluster {c}, which is shared (refcount {count}); only \
                         images without shared clusters are updated in place"
                    )));
                }
            }
            // A counted cluster lies inside the file, so inside `users`.
            let user = &mut users[c as usize];
            if *user != User::None {
                return Err(Qcow2Error::Corrupt(format!(
                    "{what} uses cluster {c}, which something else uses too"
                )));
            }
            *user = User::Plain;
        }
        Ok(())
    }

    /// Records the host clusters a compressed L2 entry reads from. Several compressed clusters
    /// may share one host cluster (its refcount counts them); nothing else may. They are never
    /// freed here, since writing into a compressed cluster is refused.
    fn claim_compressed(&self, users: &mut [User], entry: u64) -> Result<(), Qcow2Error> {
        // The spec's compressed cluster descriptor: x = 62 - (cluster_bits - 8) offset bits,
        // then the number of additional 512-byte sectors.
        let bits = self.header.cluster_bits;
        let x = 62 - (bits - 8);
        let offset = entry & ((1 << x) - 1);
        let sectors = ((entry >> x) & ((1 << (bits - 8)) - 1)) + 1;
        let end = (offset & !511) + sectors * 512;
        let cs = self.cluster_size();
        for c in offset / cs..end.div_ceil(cs) {
            match users.get_mut(c as usize) {
                Some(User::Plain) | None => {
                    return Err(Qcow2Error::Corrupt(format!(
                        "compressed data at {offset:#x} overlaps cluster {c}, which is \
                         outside the file or used by something else"
                    )));
                }
                Some(_) if self.old_refcount(c) == 0 => {
                    return Err(Qcow2Error::Corrupt(format!(
                        "compressed data uses cluster {c}, whose refcount is 0; \
                         `qemu-img check -r all` repairs the refcounts"
                    )));
                }
                Some(user) => *user = User::Compressed,
            }
        }
        Ok(())
    }

    fn cluster_size(&self) -> u64 {
        self.header.cluster_size()
    }

    fn old_refcount(&self, cluster: u64) -> u16 {
        self.refcounts.get(cluster as usize).copied().unwrap_or(0)
    }

    /// Where the old image keeps guest cluster `guest`.
    fn old_mapping(&self, guest: u64) -> Result<Old, Qcow2Error> {
        let l2_entries = self.cluster_size() / 8;
        let table = self.l1[(guest / l2_entries) as usize] & OFFSET_MASK;
        if table == 0 {
            return Ok(Old::Zeros);
        }
        let mut raw = [0u8; 8];
        let len = self.host_len()?;
        let at = table + guest % l2_entries * 8;
        read_checked(&self.storage, len, &mut raw, at, "an L2 table")?;
        let entry = u64::from_be_bytes(raw);
        if entry & COMPRESSED != 0 {
            return Ok(Old::Compressed);
        }
        if self.header.version >= 3 && entry & READS_AS_ZERO != 0 {
            return Ok(Old::Zeros);
        }
        Ok(match entry & OFFSET_MASK {
            0 => Old::Zeros,
            host => Old::Host(host),
        })
    }

    fn host_len(&self) -> Result<u64, Qcow2Error> {
        self.storage
            .size()
            .map_err(Qcow2Error::io("reading the image size"))
    }

    /// Reads guest bytes as the transaction sees them: its own writes over the old image.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Qcow2Error> {
        let size = self.header.size;
        let len = buf.len() as u64;
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(Qcow2Error::OutOfRange { offset, len, size });
        }
        let cs = self.cluster_size();
        let host_len = self.host_len()?;
        let mut pos = offset;
        for chunk in split(offset, buf.len(), cs) {
            let out = &mut buf[(pos - offset) as usize..][..chunk];
            let (guest, within) = (pos / cs, pos % cs);
            let host = match self.mapping.get(&guest) {
                Some(&host) => Some(host),
                None => match self.old_mapping(guest)? {
                    Old::Host(host) => Some(host),
                    Old::Zeros => None,
                    Old::Compressed => {
                        return Err(Qcow2Error::Unsupported("compressed clusters".into()));
                    }
                },
            };
            match host {
                Some(host) => read_checked(
                    &self.storage,
                    host_len,
                    out,
                    host + within,
                    "a data cluster",
                )?,
                None => out.fill(0),
            }
            pos += chunk as u64;
        }
        Ok(())
    }

    /// Writes guest bytes into new clusters. A cluster this transaction has not written yet
    /// gets a new host cluster holding its old bytes where `data` does not cover it.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), Qcow2Error> {
        if self.failed {
            return Err(Qcow2Error::UpdateAborted);
        }
        let size = self.header.size;
        let len = data.len() as u64;
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(Qcow2Error::OutOfRange { offset, len, size });
        }
        // Refused before anything is written, so the transaction goes on.
        let cs = self.cluster_size();
        for guest in offset / cs..(offset + len).div_ceil(cs) {
            if !self.mapping.contains_key(&guest)
                && let Old::Compressed = self.old_mapping(guest)?
            {
                return Err(Qcow2Error::Unsupported(format!(
                    "writing into guest cluster {guest}, which is compressed"
                )));
            }
        }
        let result = self.write_clusters(offset, data);
        self.failed = result.is_err();
        result
    }

    fn write_clusters(&mut self, offset: u64, data: &[u8]) -> Result<(), Qcow2Error> {
        let cs = self.cluster_size();
        // Bytes that go to the host as they are, gathered while they are adjacent there too:
        // (host offset, range of `data`).
        let mut run: Option<(u64, usize, usize)> = None;
        let mut pos = offset;
        for chunk in split(offset, data.len(), cs) {
            let from = (pos - offset) as usize;
            let (guest, within) = (pos / cs, pos % cs);
            pos += chunk as u64;
            let target = match self.mapping.get(&guest) {
                Some(&host) => host + within,
                None if chunk as u64 == cs => {
                    let host = self.allocate(1);
                    self.mapping.insert(guest, host);
                    host
                }
                None => {
                    // Part of a cluster not written yet: a whole new cluster, with its old
                    // bytes around the new ones (`write` refused compressed clusters).
                    let mut cluster = vec![0u8; cs as usize];
                    if let Old::Host(old_host) = self.old_mapping(guest)? {
                        let len = self.host_len()?;
                        read_checked(&self.storage, len, &mut cluster, old_host, "a data cluster")?;
                    }
                    cluster[within as usize..][..chunk].copy_from_slice(&data[from..from + chunk]);
                    let host = self.allocate(1);
                    self.mapping.insert(guest, host);
                    self.write_data(host, &cluster)?;
                    continue;
                }
            };
            match run {
                Some((start, a, b)) if b == from && start + (b - a) as u64 == target => {
                    run = Some((start, a, from + chunk));
                }
                _ => {
                    if let Some((start, a, b)) = run {
                        self.write_data(start, &data[a..b])?;
                    }
                    run = Some((target, from, from + chunk));
                }
            }
        }
        if let Some((start, a, b)) = run {
            self.write_data(start, &data[a..b])?;
        }
        Ok(())
    }

    fn write_data(&mut self, at: u64, data: &[u8]) -> Result<(), Qcow2Error> {
        self.storage
            .write_all_at(data, at)
            .map_err(Qcow2Error::io(format!("writing a data cluster at {at:#x}")))
    }

    /// Takes `n` adjacent clusters the old image does not use and returns the first one's
    /// offset: a hole for one cluster, the end of the file for more.
    fn allocate(&mut self, n: u64) -> u64 {
        if n == 1 {
            let limit = (self.refcounts.len() as u64).min(self.end);
            while self.hole_scan < limit {
                let c = self.hole_scan;
                self.hole_scan += 1;
                if self.refcounts[c as usize] == 0 {
                    return c * self.cluster_size();
                }
            }
        }
        let first = self.end;
        self.end += n;
        first * self.cluster_size()
    }

    /// Makes the transaction's writes the image's contents, atomically, and returns the storage.
    /// Without writes nothing is touched.
    pub fn commit(mut self) -> Result<S, Qcow2Error> {
        if self.failed {
            return Err(Qcow2Error::UpdateAborted);
        }
        if self.mapping.is_empty() {
            return Ok(self.storage);
        }
        let cs = self.cluster_size();
        let l2_entries = cs / 8;
        let host_len = self.host_len()?;
        let mut counts = Counts::new(&self.refcounts, cs);

        // L2 tables: a copy of each touched one with the new entries.
        let mapping = std::mem::take(&mut self.mapping);
        let mut new_l1 = self.l1.clone();
        let mut table = vec![0u8; cs as usize];
        let mut entries = mapping.iter().peekable();
        while let Some(&(&first_guest, _)) = entries.peek() {
            let index = first_guest / l2_entries;
            let old_table = self.l1[index as usize] & OFFSET_MASK;
            if old_table == 0 {
                table.fill(0);
            } else {
                read_checked(
                    &self.storage,
                    host_len,
                    &mut table,
                    old_table,
                    "an L2 table",
                )?;
                counts.release(old_table / cs)?;
            }
            while let Some((&guest, &host)) = entries.next_if(|(g, _)| **g / l2_entries == index) {
                let at = (guest % l2_entries * 8) as usize;
                let old = be64(&table, at);
                // Compressed entries are refused at write time; a v2 bit 0 is no zero flag.
                let old_host = old & OFFSET_MASK;
                if old_host != 0 {
                    counts.release(old_host / cs)?;
                }
                counts.take(host / cs)?;
                table[at..at + 8].copy_from_slice(&(host | COPIED).to_be_bytes());
            }
            let new_table = self.allocate(1);
            counts.take(new_table / cs)?;
            self.write_meta(new_table, &table, "an L2 table")?;
            new_l1[index as usize] = new_table | COPIED;
        }

        // The L1 table, as many clusters as the old one.
        let l1_clusters = (self.l1.len() as u64 * 8).div_ceil(cs);
        let l1_at = self.allocate(l1_clusters);
        for c in 0..l1_clusters {
            counts.release(self.header.l1_table_offset / cs + c)?;
            counts.take(l1_at / cs + c)?;
        }
        self.write_meta(l1_at, &encode(&new_l1, cs), "the L1 table")?;

        // The refcount structures count themselves: allocate until nothing changes.
        let old_rt_at = self.header.refcount_table_offset / cs;
        for c in 0..u64::from(self.header.refcount_table_clusters) {
            counts.release(old_rt_at + c)?;
        }
        let old_entries = self
            .refcount_table
            .iter()
            .rposition(|&e| e & OFFSET_MASK != 0)
            .map_or(0, |i| i as u64 + 1);
        let mut new_blocks: BTreeMap<u64, u64> = BTreeMap::new();
        let mut new_table: Option<(u64, u64)> = None;
        loop {
            let mut progress = false;
            let entries = old_entries.max(counts.used_clusters().div_ceil(counts.per_block));
            let clusters = (entries * 8).div_ceil(cs).max(1);
            if new_table.is_none_or(|(_, n)| n < clusters) {
                if let Some((at, n)) = new_table {
                    for c in 0..n {
                        counts.release(at / cs + c)?;
                    }
                }
                let at = self.allocate(clusters);
                for c in 0..clusters {
                    counts.take(at / cs + c)?;
                }
                new_table = Some((at, clusters));
                progress = true;
            }
            let dirty: Vec<u64> = counts.dirty.iter().copied().collect();
            for b in dirty {
                if new_blocks.contains_key(&b) || !counts.block_changed(b, &self.refcounts) {
                    continue;
                }
                let at = self.allocate(1);
                counts.take(at / cs)?;
                let old = self.old_block(b);
                if old != 0 {
                    counts.release(old / cs)?;
                }
                new_blocks.insert(b, at);
                progress = true;
            }
            if !progress {
                break;
            }
        }
        let (table_at, table_clusters) = new_table.expect("allocated in the first round");
        for (&b, &at) in &new_blocks {
            self.write_meta(at, &counts.encode_block(b), "a refcount block")?;
        }
        let table_entries: Vec<u64> = (0..table_clusters * cs / 8)
            .map(|b| {
                new_blocks
                    .get(&b)
                    .copied()
                    .unwrap_or_else(|| self.old_block(b))
            })
            .collect();
        self.write_meta(table_at, &encode(&table_entries, cs), "the refcount table")?;
        self.sync("syncing the new clusters")?;

        let mut switch = [0u8; 20];
        switch[..8].copy_from_slice(&l1_at.to_be_bytes());
        switch[8..16].copy_from_slice(&table_at.to_be_bytes());
        let table_clusters = u32::try_from(table_clusters)
            .map_err(|_| Qcow2Error::Corrupt("the refcount table would be too large".into()))?;
        switch[16..].copy_from_slice(&table_clusters.to_be_bytes());
        self.write_meta(SWITCH_OFFSET, &switch, "the header")?;
        self.sync("syncing the header")?;

        // Committed. Give back what is free now: punch it out, and cut a free tail.
        let committed = |source| Qcow2Error::Io {
            what: "reclaiming the freed clusters (the update is committed)".into(),
            source,
        };
        let file_clusters = self.host_len()?.div_ceil(cs);
        let used = counts.used_clusters();
        let mut c = 0;
        while c < used {
            if counts.get(c) != 0 {
                c += 1;
                continue;
            }
            let start = c;
            while c < used && counts.get(c) == 0 {
                c += 1;
            }
            self.storage
                .punch_hole(start * cs, (c - start) * cs)
                .map_err(committed)?;
        }
        if file_clusters > used {
            self.storage.set_len(used * cs).map_err(committed)?;
        }
        Ok(self.storage)
    }

    /// The old refcount table's entry for block `b` (0 if it has none).
    fn old_block(&self, b: u64) -> u64 {
        self.refcount_table
            .get(b as usize)
            .map_or(0, |e| e & OFFSET_MASK)
    }

    fn write_meta(&mut self, at: u64, bytes: &[u8], what: &str) -> Result<(), Qcow2Error> {
        self.storage
            .write_all_at(bytes, at)
            .map_err(Qcow2Error::io(format!("writing {what} at {at:#x}")))
    }

    fn sync(&mut self, what: &str) -> Result<(), Qcow2Error> {
        self.storage.sync_data().map_err(Qcow2Error::io(what))
    }
}

impl<S: UpdateStorage> BlockSource for Qcow2Update<S> {
    fn size(&self) -> u64 {
        self.header.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.read(offset, buf).map_err(into_io)
    }
}

impl<S: UpdateStorage> BlockSink for Qcow2Update<S> {
    fn len(&self) -> u64 {
        self.header.size
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.write(offset, data).map_err(into_io)
    }
}

fn into_io(e: Qcow2Error) -> io::Error {
    match e {
        Qcow2Error::OutOfRange { .. } => io::Error::new(io::ErrorKind::InvalidInput, e),
        e => io::Error::other(e),
    }
}

/// The new refcounts, starting from the old ones, and the blocks whose counts were touched.
struct Counts {
    counts: Vec<u16>,
    per_block: u64,
    dirty: BTreeSet<u64>,
}

impl Counts {
    fn new(old: &[u16], cs: u64) -> Self {
        Counts {
            counts: old.to_vec(),
            per_block: cs / 2,
            dirty: BTreeSet::new(),
        }
    }

    fn get(&self, c: u64) -> u16 {
        self.counts.get(c as usize).copied().unwrap_or(0)
    }

    fn take(&mut self, c: u64) -> Result<(), Qcow2Error> {
        if c as usize >= self.counts.len() {
            self.counts.resize(c as usize + 1, 0);
        }
        let slot = &mut self.counts[c as usize];
        *slot = slot
            .checked_add(1)
            .ok_or_else(|| Qcow2Error::Corrupt(format!("cluster {c} would be used twice")))?;
        self.dirty.insert(c / self.per_block);
        Ok(())
    }

    fn release(&mut self, c: u64) -> Result<(), Qcow2Error> {
        let slot = self
            .counts
            .get_mut(c as usize)
            .filter(|n| **n > 0)
            .ok_or_else(|| {
                Qcow2Error::Corrupt(format!("cluster {c} is freed but has refcount 0"))
            })?;
        *slot -= 1;
        self.dirty.insert(c / self.per_block);
        Ok(())
    }

    /// One past the last cluster with a non-zero count.
    fn used_clusters(&self) -> u64 {
        self.counts
            .iter()
            .rposition(|&n| n != 0)
            .map_or(0, |i| i as u64 + 1)
    }

    fn range(&self, v: &[u16], b: u64) -> Vec<u16> {
        let start = (b * self.per_block) as usize;
        let mut out = vec![0u16; self.per_block as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = v.get(start + i).copied().unwrap_or(0);
        }
        out
    }

    /// Whether block `b` counts differently from the same block of `old`.
    fn block_changed(&self, b: u64, old: &[u16]) -> bool {
        self.range(&self.counts, b) != self.range(old, b)
    }

    fn encode_block(&self, b: u64) -> Vec<u8> {
        self.range(&self.counts, b)
            .iter()
            .flat_map(|n| n.to_be_bytes())
            .collect()
    }
}

/// Big-endian table entries, zero-padded to whole clusters.
fn encode(entries: &[u64], cs: u64) -> Vec<u8> {
    let mut out: Vec<u8> = entries.iter().flat_map(|e| e.to_be_bytes()).collect();
    out.resize(
        (out.len() as u64).div_ceil(cs).max(1) as usize * cs as usize,
        0,
    );
    out
}

/// The lengths of the pieces of `[offset, offset + len)` cut at cluster boundaries.
fn split(offset: u64, len: usize, cs: u64) -> impl Iterator<Item = usize> {
    let mut pos = offset;
    let end = offset + len as u64;
    std::iter::from_fn(move || {
        (pos < end).then(|| {
            let n = (cs - pos % cs).min(end - pos);
            pos += n;
            n as usize
        })
    })
}

/// Reads `bytes` bytes of big-endian u64 entries at `at`, checked against the file.
fn read_table<S: ReadAt>(
    source: &S,
    file_len: u64,
    at: u64,
    bytes: u64,
    what: &'static str,
) -> Result<Vec<u64>, Qcow2Error> {
    if at.checked_add(bytes).is_none_or(|end| end > file_len) {
        return Err(Qcow2Error::Truncated(what));
    }
    let mut raw = vec![0u8; bytes as usize];
    read_checked(source, file_len, &mut raw, at, what)?;
    Ok(raw.chunks_exact(8).map(|e| be64(e, 0)).collect())
}

fn check_aligned(offset: u64, cs: u64, what: &str) -> Result<(), Qcow2Error> {
    if !offset.is_multiple_of(cs) {
        return Err(Qcow2Error::Corrupt(format!(
            "{what} at offset {offset:#x} is not cluster-aligned"
        )));
    }
    Ok(())
}

/// The refusals specific to changing an image; [`validate_header`] covers what reading needs.
fn refuse_unsupported(h: &Header) -> Result<(), Qcow2Error> {
    let refuse = |why: String| Err(Qcow2Error::NotUpdatable(why));
    if h.backing_file_offset != 0 && h.backing_file_size != 0 {
        return refuse("it has a backing file; only standalone images are updated".into());
    }
    if h.crypt_method != 0 {
        return refuse("it is encrypted".into());
    }
    if h.nb_snapshots > 0 {
        return refuse(format!(
            "it has {} internal snapshots (`qemu-img snapshot -l` lists them)",
            h.nb_snapshots
        ));
    }
    if h.incompatible_features & INCOMPAT_DIRTY != 0 {
        return refuse(
            "it is marked dirty (its refcounts may be stale); run `qemu-img check -r all` on it"
                .into(),
        );
    }
    if h.autoclear_features != 0 {
        return refuse(format!(
            "it has autoclear features {:#x} (such as persistent bitmaps), which a change \
             would make stale",
            h.autoclear_features
        ));
    }
    if h.refcount_order != 4 {
        return refuse(format!(
            "its refcounts are {} bits wide; only 16-bit refcounts are supported",
            1u64 << h.refcount_order.min(63)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use proptest::prelude::*;

    use super::*;
    use crate::disk::SparseBuffer;
    use crate::disk::qcow2::write_data_image;

    const C: u64 = 1 << 16;

    /// An image in memory that records the offsets it was read at.
    #[derive(Debug, Default)]
    struct Memory {
        bytes: Vec<u8>,
        reads: RefCell<Vec<u64>>,
        /// Every write fails.
        broken: bool,
        /// Writes made so far.
        writes: usize,
    }

    impl ReadAt for Memory {
        fn size(&self) -> io::Result<u64> {
            Ok(self.bytes.len() as u64)
        }

        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            self.reads.borrow_mut().push(offset);
            self.bytes.read_exact_at(buf, offset)
        }
    }

    impl UpdateStorage for Memory {
        fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
            if self.broken {
                return Err(io::Error::other("broken"));
            }
            self.writes += 1;
            let end = offset as usize + buf.len();
            if self.bytes.len() < end {
                self.bytes.resize(end, 0);
            }
            self.bytes[offset as usize..end].copy_from_slice(buf);
            Ok(())
        }

        fn sync_data(&mut self) -> io::Result<()> {
            Ok(())
        }

        fn punch_hole(&mut self, offset: u64, len: u64) -> io::Result<()> {
            self.bytes[offset as usize..(offset + len) as usize].fill(0);
            Ok(())
        }

        fn set_len(&mut self, len: u64) -> io::Result<()> {
            self.bytes.truncate(len as usize);
            Ok(())
        }
    }

    /// A 1 GiB image of our writer: header, refcount table, L1, refcount block, L2, then the
    /// data cluster of guest cluster 0 at host cluster 5, holding "hello" at byte 100.
    fn sample() -> Memory {
        let mut contents = SparseBuffer::new(1 << 30);
        contents.write_at(100, b"hello").unwrap();
        let file = tempfile::NamedTempFile::new().unwrap();
        write_data_image(file.as_file(), 1 << 30, &contents).unwrap();
        Memory {
            bytes: std::fs::read(file.path()).unwrap(),
            reads: RefCell::default(),
            broken: false,
            writes: 0,
        }
    }

    fn patched(at: usize, bytes: &[u8]) -> Memory {
        let mut m = sample();
        m.bytes[at..at + bytes.len()].copy_from_slice(bytes);
        m
    }

    fn read(update: &Qcow2Update<Memory>, at: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0xAA; len];
        update.read(at, &mut buf).unwrap();
        buf
    }

    #[test]
    fn a_whole_cluster_is_written_without_reading_the_old_one() {
        let mut update = Qcow2Update::open_storage(sample()).unwrap();
        update.storage.reads.borrow_mut().clear();
        update.write(0, &[7; C as usize]).unwrap();
        assert!(!update.storage.reads.borrow().contains(&(5 * C)));
        assert_eq!(read(&update, 98, 4), [7; 4]);

        // A partial write of a cluster keeps its old bytes, which it reads.
        let mut update = Qcow2Update::open_storage(sample()).unwrap();
        update.write(102, b"LL").unwrap();
        assert!(update.storage.reads.borrow().contains(&(5 * C)));
        assert_eq!(read(&update, 98, 9), b"\0\0heLLo\0\0");
        // Written twice in one transaction: one new cluster, written in place.
        update.write(C - 1, b"xy").unwrap();
        update.write(C, b"z").unwrap();
        assert_eq!(update.mapping.len(), 2);
        assert_eq!(read(&update, C - 1, 3), b"xz\0");
    }

    #[test]
    fn a_large_write_goes_to_disk_in_one_piece() {
        let mut update = Qcow2Update::open_storage(sample()).unwrap();
        // 64 MiB from the second guest cluster: new clusters one after another at the end.
        let data = vec![9u8; 64 << 20];
        update.write(C, &data).unwrap();
        assert_eq!(update.storage.writes, 1);
        assert_eq!(update.mapping.len(), 1024);
        assert_eq!(read(&update, 64 << 20, 4), [9; 4]);
        // Over clusters written already: in one piece again. A part of a new cluster is
        // written apart, with its old bytes.
        update.write(C / 2, &vec![8u8; C as usize * 4]).unwrap();
        assert_eq!(update.storage.writes, 1 + 2);
        assert_eq!(read(&update, 98, 9), b"\0\0hello\0\0");
    }

    #[test]
    fn the_old_image_is_untouched_until_commit() {
        let old = sample().bytes;
        let mut update = Qcow2Update::open_storage(sample()).unwrap();
        update.write(5, &[1; 3 * C as usize]).unwrap();
        let bytes = &update.storage.bytes;
        assert!(bytes.len() > old.len() && bytes[..old.len()] == old[..]);
        let memory = update.commit().unwrap();
        let image = super::super::Qcow2Image::from_source(memory.bytes).unwrap();
        let mut buf = [0; 8];
        image.read_at(3, &mut buf).unwrap();
        assert_eq!(buf, [0, 0, 1, 1, 1, 1, 1, 1]);
    }

    #[test]
    fn writes_past_the_end_and_after_a_failure_are_refused() {
        let mut update = Qcow2Update::open_storage(sample()).unwrap();
        let err = update.write_at((1 << 30) - 1, b"ab").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        update.write(0, b"a").unwrap();
        // A failed write may leave a new cluster half written: the transaction is over.
        update.storage.broken = true;
        assert!(matches!(update.write(C, b"a"), Err(Qcow2Error::Io { .. })));
        update.storage.broken = false;
        assert!(matches!(
            update.write(0, b"a"),
            Err(Qcow2Error::UpdateAborted)
        ));
        assert!(matches!(update.commit(), Err(Qcow2Error::UpdateAborted)));
    }

    #[test]
    fn images_that_cannot_be_changed_are_refused() {
        let refused = |m: Memory, what: &str| {
            let err = Qcow2Update::open_storage(m).unwrap_err();
            assert!(matches!(err, Qcow2Error::NotUpdatable(_)), "{err}");
            assert!(err.to_string().contains(what), "{err}");
        };
        refused(patched(35, &[2]), "encrypted");
        refused(patched(63, &[1]), "1 internal snapshots");
        refused(patched(79, &[1]), "dirty");
        refused(patched(95, &[1]), "autoclear");
        refused(patched(99, &[5]), "32 bits");
        // The data cluster counted twice: shared clusters are refused.
        refused(patched(3 * C as usize + 10, &[0, 2]), "shared");
        // A used cluster with refcount 0 would be handed out as a hole.
        let err = Qcow2Update::open_storage(patched(3 * C as usize + 10, &[0, 0])).unwrap_err();
        assert!(err.to_string().contains("refcount is 0"), "{err}");
        // Guest clusters 0 and 1 both in host cluster 5 (refcount 1).
        let mut m = sample();
        let entry = m.bytes[4 * C as usize..][..8].to_vec();
        m.bytes[4 * C as usize + 8..][..8].copy_from_slice(&entry);
        let err = Qcow2Update::open_storage(m).unwrap_err();
        assert!(err.to_string().contains("something else uses"), "{err}");
        // The L1 table claiming the header's cluster.
        let err = Qcow2Update::open_storage(patched(40, &[0; 8])).unwrap_err();
        assert!(err.to_string().contains("something else uses"), "{err}");
        let err = Qcow2Update::open_storage(patched(79, &[2])).unwrap_err();
        assert!(matches!(err, Qcow2Error::Corrupt(_)), "{err}");
    }

    #[test]
    fn writing_into_a_compressed_cluster_is_refused() {
        let mut m = sample();
        let at = 4 * C as usize;
        m.bytes[at..at + 8].copy_from_slice(&(COMPRESSED | (5 * C)).to_be_bytes());
        let mut update = Qcow2Update::open_storage(m).unwrap();
        // Another guest cluster is fine.
        update.write(C, b"x").unwrap();
        let err = update.write(C - 1, b"xy").unwrap_err();
        assert!(err.to_string().contains("compressed"), "{err}");
        // Compressed data past the end of the file, or in a cluster counted as free.
        let compressed = |host: u64, refcount: u8| {
            let mut m = sample();
            m.bytes[at..at + 8].copy_from_slice(&(COMPRESSED | host).to_be_bytes());
            m.bytes[3 * C as usize + 11] = refcount;
            Qcow2Update::open_storage(m).unwrap_err().to_string()
        };
        assert!(compressed(6 * C, 1).contains("outside the file"));
        assert!(compressed(5 * C, 0).contains("refcount is 0"));
        // Nothing was written: the transaction goes on.
        update.write(2 * C, b"z").unwrap();
        update.commit().unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        /// Any bytes in the header and tables: opening, writing and committing return errors,
        /// never panic.
        #[test]
        fn hostile_images_do_not_panic(
            patches in prop::collection::vec((0..5 * C as usize, any::<u8>()), 1..8),
            truncate in prop::option::of(0..6 * C as usize),
        ) {
            let mut m = sample();
            for (at, byte) in patches {
                m.bytes[at] = byte;
            }
            if let Some(len) = truncate {
                m.bytes.truncate(len);
            }
            if let Ok(mut update) = Qcow2Update::open_storage(m) {
                let _ = update.write(90, &[3; 70_000]);
                let _ = update.read(0, &mut [0; 100]);
                let _ = update.commit();
            }
        }
    }
}
