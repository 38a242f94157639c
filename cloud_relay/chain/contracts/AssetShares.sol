// SPDX-License-Identifier: LicenseRef-Proprietary
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {ERC1155} from "@openzeppelin/contracts/token/ERC1155/ERC1155.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {Checkpoints} from "@openzeppelin/contracts/utils/structs/Checkpoints.sol";

/// @title Fractional ownership of assets as ERC-1155 fungible shares (issue 19).
/// @notice One fungible id per asset, `uint256(asset)` with `asset` = keccak256 of the utf-8 asset id. The issuer
/// mints shares; owners move them with the standard ERC-1155 transfers. Every balance change writes a checkpoint
/// keyed by `block.timestamp`, so the share table in force at any time T can be read back from the chain
/// (`balanceOfAt` over `holders`) and a period's payout split exactly as the relay's largest-remainder rule does.
contract AssetShares is ERC1155, AccessControl {
    using Checkpoints for Checkpoints.Trace208;

    bytes32 public constant ISSUER_ROLE = keccak256("ISSUER_ROLE");

    mapping(uint256 id => mapping(address account => Checkpoints.Trace208)) private _balanceHistory;
    mapping(uint256 id => Checkpoints.Trace208) private _supplyHistory;
    mapping(uint256 id => address[]) private _holders;
    mapping(uint256 id => mapping(address account => bool)) private _isHolder;

    error ZeroAsset();

    constructor() ERC1155("") {
        _grantRole(DEFAULT_ADMIN_ROLE, msg.sender);
    }

    /// @notice Mint `amount` shares of `asset` to `to`.
    function mint(address to, bytes32 asset, uint256 amount) external onlyRole(ISSUER_ROLE) {
        if (asset == bytes32(0)) revert ZeroAsset();
        _mint(to, uint256(asset), amount, "");
    }

    /// @notice `account`'s shares of `asset` at the end of the latest block with timestamp <= `timestamp`.
    function balanceOfAt(address account, bytes32 asset, uint48 timestamp) external view returns (uint256) {
        return _balanceHistory[uint256(asset)][account].upperLookupRecent(timestamp);
    }

    /// @notice All shares of `asset` at the end of the latest block with timestamp <= `timestamp`.
    function totalSupplyAt(bytes32 asset, uint48 timestamp) external view returns (uint256) {
        return _supplyHistory[uint256(asset)].upperLookupRecent(timestamp);
    }

    /// @notice Every address that ever held shares of `asset` (in the order they first received them).
    function holders(bytes32 asset) external view returns (address[] memory) {
        return _holders[uint256(asset)];
    }

    function supportsInterface(bytes4 interfaceId) public view override(ERC1155, AccessControl) returns (bool) {
        return super.supportsInterface(interfaceId);
    }

    /// @dev Balances move in ERC1155._update; the checkpoints follow right after, before any receiver hook runs
    /// (the acceptance check comes after _update in ERC1155), so the history is written before any external call.
    function _update(address from, address to, uint256[] memory ids, uint256[] memory values) internal override {
        super._update(from, to, ids, values);
        uint48 key = SafeCast.toUint48(block.timestamp);
        for (uint256 i = 0; i < ids.length; ++i) {
            uint256 id = ids[i];
            if (from != address(0)) {
                _balanceHistory[id][from].push(key, SafeCast.toUint208(balanceOf(from, id)));
            }
            if (to != address(0)) {
                _balanceHistory[id][to].push(key, SafeCast.toUint208(balanceOf(to, id)));
                if (!_isHolder[id][to]) {
                    _isHolder[id][to] = true;
                    _holders[id].push(to);
                }
            }
            if (from == address(0) || to == address(0)) {
                uint208 supply = _supplyHistory[id].latest();
                uint208 value = SafeCast.toUint208(values[i]);
                _supplyHistory[id].push(key, from == address(0) ? supply + value : supply - value);
            }
        }
    }
}
