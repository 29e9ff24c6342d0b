"""Type stubs of the native module (rust/nearq-python). Use the documented wrappers in
:mod:`nearq` (``nearq.Index``, ``nearq.exact_search``) rather than these directly."""

from os import PathLike
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

__version__: str

_Neighbors = Tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]

class Index:
    @staticmethod
    def build(
        data: npt.NDArray[np.float32],
        metric: str,
        encoding: str,
        bits: Optional[List[int]],
        keep_vectors: bool,
        degree: int,
        build_ef: int,
        alpha: float,
        threads: Optional[int],
        seed: int,
        progress: bool,
        variant: Optional[str] = None,
        subspaces: Optional[int] = None,
        opq: bool = False,
        ids: Optional[npt.NDArray[np.int64]] = None,
        saq_bits: Optional[float] = None,
        quantized_graph: Optional[bool] = None,
    ) -> Index: ...
    def search(
        self,
        queries: npt.NDArray[np.float32],
        k: int,
        ef: Optional[int] = None,
        rerank: Optional[int] = None,
        threads: Optional[int] = None,
        filter_ids: Optional[npt.NDArray[np.int64]] = None,
        filter_mask: Optional[npt.NDArray[np.bool_]] = None,
        filter_strategy: Optional[str] = None,
    ) -> _Neighbors: ...
    def add(
        self,
        data: npt.NDArray[np.float32],
        ids: Optional[npt.NDArray[np.int64]] = None,
        threads: Optional[int] = None,
    ) -> npt.NDArray[np.int64]: ...
    def delete(self, ids: npt.NDArray[np.int64], threads: Optional[int] = None) -> int: ...
    def upsert(
        self,
        data: npt.NDArray[np.float32],
        ids: npt.NDArray[np.int64],
        threads: Optional[int] = None,
    ) -> None: ...
    def consolidate(self, threads: Optional[int] = None) -> None: ...
    def ids(self) -> npt.NDArray[np.int64]: ...
    def contains(self, id: int) -> bool: ...
    @property
    def bit_allocation(self) -> Optional[List[Tuple[int, int]]]: ...
    @property
    def deleted_count(self) -> int: ...
    def save(self, path: Union[str, PathLike[str]]) -> None: ...
    @staticmethod
    def load(path: Union[str, PathLike[str]], mmap: int = 0) -> Index: ...
    def to_bytes(self) -> bytes: ...
    @staticmethod
    def from_bytes(data: bytes) -> Index: ...
    def __len__(self) -> int: ...
    @property
    def dim(self) -> int: ...
    @property
    def metric(self) -> str: ...
    @property
    def encoding(self) -> str: ...
    @property
    def keep_vectors(self) -> bool: ...
    @property
    def quantized_graph(self) -> bool: ...
    @property
    def degree(self) -> int: ...
    @property
    def build_params(self) -> Dict[str, Any]: ...
    def memory_usage(self) -> Dict[str, int]: ...

class QuantizedGraph:
    @staticmethod
    def build(
        data: npt.NDArray[np.float32],
        metric: str,
        degree: int,
        build_ef: int,
        alpha: float,
        threads: Optional[int],
        seed: int,
    ) -> QuantizedGraph: ...
    def search(
        self,
        queries: npt.NDArray[np.float32],
        k: int,
        ef: int,
        threads: Optional[int] = None,
    ) -> _Neighbors: ...
    def save(self, path: Union[str, PathLike[str]]) -> None: ...
    @staticmethod
    def load(path: Union[str, PathLike[str]]) -> QuantizedGraph: ...
    def __len__(self) -> int: ...
    @property
    def dim(self) -> int: ...
    def memory_usage(self) -> int: ...

def exact_search(
    data: npt.NDArray[np.float32],
    queries: npt.NDArray[np.float32],
    k: int,
    metric: str,
    threads: Optional[int] = None,
) -> _Neighbors: ...
def simd_info() -> Dict[str, Union[str, List[str], None]]: ...
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
