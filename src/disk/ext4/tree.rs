//! The files to lay down in a new filesystem, as a caller describes them: names, types,
//! metadata and where each file holds data. Nothing here reads the host; the file contents
//! are handed over later, run by run (see [`super::DataRun`]).
//!
//! Directories are added under exactly one parent, so the tree has no cycles; regular files
//! and symbolic links may have several names (hard links). Replacing a name (as a later tar
//! entry does) leaves the old node unreachable, and unreachable nodes are never written.

use std::collections::BTreeMap;

pub use super::inode::Time;

/// The longest name a directory entry holds (`name_len` is one byte).
pub const MAX_NAME: usize = 255;
/// The most names one inode may have (`EXT4_LINK_MAX`).
pub const MAX_LINKS: usize = 65000;
/// The longest symbolic link target the kernel follows (`PATH_MAX` less the NUL).
pub const MAX_SYMLINK: usize = 4095;

/// A node's index in the tree.
pub type NodeId = usize;

/// Owner, permissions and times of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits with set-user-ID, set-group-ID and sticky (`mode & 0o7777`).
    pub perm: u16,
    /// Numeric owner.
    pub uid: u32,
    /// Numeric group.
    pub gid: u32,
    /// Last access.
    pub atime: Time,
    /// Last modification of the contents.
    pub mtime: Time,
    /// Last change of the inode.
    pub ctime: Time,
}

/// What a node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory: name to node, in byte order.
    Dir(BTreeMap<Vec<u8>, NodeId>),
    /// A regular file of `size` bytes that holds data in the byte ranges `data` (offset,
    /// length), ascending and disjoint; everything else is a hole.
    File {
        /// Length in bytes.
        size: u64,
        /// Ranges that hold data.
        data: Vec<(u64, u64)>,
    },
    /// A symbolic link, stored as its target's bytes.
    Symlink(Vec<u8>),
}

/// One file, directory or link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Owner, permissions and times.
    pub meta: Meta,
    /// What it is.
    pub kind: Kind,
}

/// Why a name or a node cannot go into the tree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    /// A name longer than [`MAX_NAME`] bytes.
    #[error("the name is {0} bytes long; ext4 names are at most 255 bytes")]
    NameTooLong(usize),
    /// An empty name, `.`, `..`, or one with `/` or NUL.
    #[error("{0:?} is not a valid file name")]
    BadName(String),
    /// A symbolic link target that is empty or too long.
    #[error("the symbolic link target is {0} bytes long; it must be 1 to 4095 bytes")]
    BadTarget(usize),
    /// The parent is not a directory.
    #[error("the parent is not a directory")]
    NotADirectory,
    /// A hard link to a directory.
    #[error("a directory cannot have a second name (hard link)")]
    DirectoryLink,
}

/// A tree of nodes; node 0 is the root directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    nodes: Vec<Node>,
}

impl Tree {
    /// The root directory.
    pub const ROOT: NodeId = 0;

    /// A tree holding only an empty root directory with `meta`.
    pub fn new(meta: Meta) -> Self {
        Self {
            nodes: vec![Node {
                meta,
                kind: Kind::Dir(BTreeMap::new()),
            }],
        }
    }

    /// How many nodes were added, reachable or not (node ids are below this).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The node `id`.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id]
    }

    /// The node `id`, to change its metadata.
    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[id]
    }

    /// The node called `name` in directory `dir`, if any.
    pub fn lookup(&self, dir: NodeId, name: &[u8]) -> Option<NodeId> {
        match &self.nodes[dir].kind {
            Kind::Dir(entries) => entries.get(name).copied(),
            _ => None,
        }
    }

    /// Adds `node` as `name` in directory `parent`, replacing what had that name.
    pub fn add(&mut self, parent: NodeId, name: &[u8], node: Node) -> Result<NodeId, TreeError> {
        check_name(name)?;
        if let Kind::Symlink(target) = &node.kind
            && !(1..=MAX_SYMLINK).contains(&target.len())
        {
            return Err(TreeError::BadTarget(target.len()));
        }
        let id = self.nodes.len();
        self.entries(parent)?.insert(name.to_vec(), id);
        self.nodes.push(node);
        Ok(id)
    }

    /// Removes the entry `name` of directory `dir`, returning the node it named.
    pub fn unlink(&mut self, dir: NodeId, name: &[u8]) -> Option<NodeId> {
        self.entries(dir).ok()?.remove(name)
    }

    /// Gives the file or symbolic link `target` the further name `name` in `parent`.
    pub fn link(&mut self, parent: NodeId, name: &[u8], target: NodeId) -> Result<(), TreeError> {
        check_name(name)?;
        if matches!(self.nodes[target].kind, Kind::Dir(_)) {
            return Err(TreeError::DirectoryLink);
        }
        self.entries(parent)?.insert(name.to_vec(), target);
        Ok(())
    }

    fn entries(&mut self, dir: NodeId) -> Result<&mut BTreeMap<Vec<u8>, NodeId>, TreeError> {
        match &mut self.nodes[dir].kind {
            Kind::Dir(entries) => Ok(entries),
            _ => Err(TreeError::NotADirectory),
        }
    }
}

/// A directory entry's name: 1 to 255 bytes, no `/` or NUL, not `.` or `..`.
pub fn check_name(name: &[u8]) -> Result<(), TreeError> {
    if name.len() > MAX_NAME {
        return Err(TreeError::NameTooLong(name.len()));
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(TreeError::BadName(
            String::from_utf8_lossy(name).into_owned(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            perm: 0o755,
            uid: 0,
            gid: 0,
            atime: Time::default(),
            mtime: Time::default(),
            ctime: Time::default(),
        }
    }

    fn file() -> Node {
        Node {
            meta: meta(),
            kind: Kind::File {
                size: 0,
                data: Vec::new(),
            },
        }
    }

    #[test]
    fn names_are_checked() {
        let mut t = Tree::new(meta());
        assert_eq!(
            t.add(Tree::ROOT, &[b'a'; 256], file()),
            Err(TreeError::NameTooLong(256))
        );
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0"] {
            assert!(matches!(
                t.add(Tree::ROOT, bad, file()),
                Err(TreeError::BadName(_))
            ));
        }
        let f = t.add(Tree::ROOT, &[b'a'; 255], file()).unwrap();
        assert_eq!(t.add(f, b"x", file()), Err(TreeError::NotADirectory));
    }

    #[test]
    fn links_name_files_but_not_directories() {
        let mut t = Tree::new(meta());
        let f = t.add(Tree::ROOT, b"f", file()).unwrap();
        t.link(Tree::ROOT, b"g", f).unwrap();
        assert_eq!(t.lookup(Tree::ROOT, b"g"), Some(f));
        let d = t
            .add(
                Tree::ROOT,
                b"d",
                Node {
                    meta: meta(),
                    kind: Kind::Dir(BTreeMap::new()),
                },
            )
            .unwrap();
        assert_eq!(t.link(Tree::ROOT, b"e", d), Err(TreeError::DirectoryLink));
    }
}
